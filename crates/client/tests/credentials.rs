//! Docker `config.json` credentials against files written the way Docker writes them, real
//! credential helper programs (shell scripts speaking the docker-credential-helpers
//! protocol), and the real `docker` and `skopeo` clients sharing the same file.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gantry_client::credentials::{
    registry_key, Credential, CredentialsError, DockerConfig, DOCKER_HUB_KEY,
};
use gantry_test_support::{
    assert_success, child_path, output_with_timeout, require_tool, tempdir, DistributionRegistry,
};
use serde_json::{json, Value};

/// A credential helper speaking the docker-credential-helpers protocol, keeping one file per
/// server under @STORE@ and logging every call (action and stdin) to @STORE@/calls.log.
const TEST_HELPER: &str = r#"#!/bin/sh
store='@STORE@'
log="$store/calls.log"
key() { printf '%s' "$1" | od -An -tx1 | tr -d ' \n'; }
case "$1" in
get)
  url=$(cat)
  printf 'get %s\n' "$url" >> "$log"
  f="$store/$(key "$url").json"
  if [ -f "$f" ]; then cat "$f"; else echo "credentials not found in native keychain"; exit 1; fi ;;
store)
  json=$(cat)
  printf 'store %s\n' "$json" >> "$log"
  url=$(printf '%s' "$json" | sed -n 's/.*"ServerURL": *"\([^"]*\)".*/\1/p')
  [ -n "$url" ] || { echo "missing server url" >&2; exit 1; }
  printf '%s' "$json" > "$store/$(key "$url").json" ;;
erase)
  url=$(cat)
  printf 'erase %s\n' "$url" >> "$log"
  f="$store/$(key "$url").json"
  if [ -f "$f" ]; then rm "$f"; else echo "credentials not found in native keychain"; exit 1; fi ;;
list)
  echo '{}' ;;
*)
  echo "unknown action $1" >&2; exit 2 ;;
esac
"#;

/// A temp dir with `config.json`, a `bin` dir for helpers and a `store` dir for the test
/// helper's secrets.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let env = Env { dir: tempdir() };
        fs::create_dir(env.bin()).unwrap();
        fs::create_dir(env.store()).unwrap();
        env
    }

    fn config_dir(&self) -> PathBuf {
        self.dir.path().join("docker")
    }

    fn config_path(&self) -> PathBuf {
        self.config_dir().join("config.json")
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn write_config(&self, text: &str) {
        fs::create_dir_all(self.config_dir()).unwrap();
        fs::write(self.config_path(), text).unwrap();
    }

    fn read_config(&self) -> Value {
        serde_json::from_str(&fs::read_to_string(self.config_path()).unwrap()).unwrap()
    }

    fn load(&self) -> DockerConfig {
        DockerConfig::load_from(&self.config_path())
            .unwrap()
            .with_helper_dir(self.bin())
    }

    /// Installs `docker-credential-<name>` running `script`.
    fn install_helper(&self, name: &str, script: &str) {
        let path = self.bin().join(format!("docker-credential-{name}"));
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Installs the file-backed test helper as `docker-credential-test`.
    fn install_test_helper(&self) {
        let store = self.store().display().to_string();
        self.install_helper("test", &TEST_HELPER.replace("@STORE@", &store));
    }

    /// What the test helper was asked, one call per line.
    fn helper_calls(&self) -> String {
        fs::read_to_string(self.store().join("calls.log")).unwrap_or_default()
    }

    /// Number of secrets the test helper holds.
    fn helper_secrets(&self) -> usize {
        fs::read_dir(self.store())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().ends_with(".json")
            })
            .count()
    }
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn reads_config_json_in_dockers_exact_format() {
    let env = Env::new();
    // As `docker login` writes it: tab indentation, the Hub under its v1 URL.
    env.write_config(&format!(
        "{{\n\t\"auths\": {{\n\t\t\"https://index.docker.io/v1/\": {{\n\t\t\t\"auth\": \"{}\"\n\t\t}},\n\
         \t\t\"registry.example.com\": {{\n\t\t\t\"auth\": \"{}\",\n\t\t\t\"identitytoken\": \"refresh-tok\"\n\t\t}},\n\
         \t\t\"127.0.0.1:5000\": {{\n\t\t\t\"username\": \"carol\",\n\t\t\t\"password\": \"c-pass\"\n\t\t}},\n\
         \t\t\"ghcr.io\": {{}}\n\t}},\n\t\"psFormat\": \"table {{{{.ID}}}}\"\n}}",
        b64("alice:s3cr:et"),
        b64("bob:")
    ));
    let cfg = env.load();
    let alice = Credential::new("alice", "s3cr:et");
    for hub in [
        "docker.io",
        "index.docker.io",
        "registry-1.docker.io",
        DOCKER_HUB_KEY,
    ] {
        assert_eq!(cfg.get(hub).unwrap(), Some(alice.clone()), "{hub}");
    }
    let token = cfg.get("registry.example.com").unwrap().unwrap();
    assert_eq!(token, Credential::identity_token("refresh-tok"));
    assert_eq!(token.username, "<token>");
    assert!(token.is_identity_token());
    assert_eq!(
        cfg.get("127.0.0.1:5000").unwrap(),
        Some(Credential::new("carol", "c-pass"))
    );
    // An empty entry (a helper-backed login) and an unknown host hold nothing.
    assert_eq!(cfg.get("ghcr.io").unwrap(), None);
    assert_eq!(cfg.get("quay.io").unwrap(), None);
    // Another port is another registry.
    assert_eq!(cfg.get("127.0.0.1:5001").unwrap(), None);
    assert_eq!(cfg.path(), env.config_path());
}

#[test]
fn auths_keys_match_by_normalized_host() {
    let spellings = [
        "registry.example.com:5000",
        "https://registry.example.com:5000",
        "http://registry.example.com:5000",
        "https://registry.example.com:5000/v1/",
        "registry.example.com:5000/v2/",
        "https://registry.example.com:5000/v2/",
    ];
    for key in spellings {
        let env = Env::new();
        env.write_config(&json!({ "auths": { key: { "auth": b64("u:p") } } }).to_string());
        let cfg = env.load();
        for asked in [
            "registry.example.com:5000",
            "https://registry.example.com:5000/",
        ] {
            assert_eq!(
                cfg.get(asked).unwrap(),
                Some(Credential::new("u", "p")),
                "key {key:?} asked as {asked:?}"
            );
        }
        assert_eq!(
            cfg.get("registry.example.com").unwrap(),
            None,
            "key {key:?}"
        );
    }
    assert_eq!(registry_key("docker.io"), "https://index.docker.io/v1/");
    assert_eq!(registry_key("registry-1.docker.io"), DOCKER_HUB_KEY);
    assert_eq!(registry_key("index.docker.io"), DOCKER_HUB_KEY);
    assert_eq!(registry_key("127.0.0.1:5000"), "127.0.0.1:5000");
    assert_eq!(
        registry_key("https://registry.example.com/v2/"),
        "registry.example.com"
    );

    // The canonical key wins over a differently spelled one.
    let env = Env::new();
    env.write_config(
        &json!({ "auths": {
            "http://r.example.com/v1/": { "auth": b64("old:o") },
            "r.example.com": { "auth": b64("new:n") },
        }})
        .to_string(),
    );
    assert_eq!(
        env.load().get("r.example.com").unwrap(),
        Some(Credential::new("new", "n"))
    );
}

#[test]
fn store_and_erase_round_trip_preserves_other_keys_and_mode_0600() {
    let env = Env::new();
    let original = format!(
        "{{\n\t\"proxies\": {{\n\t\t\"default\": {{\n\t\t\t\"httpProxy\": \"http://proxy:3128\",\n\t\t\t\"noProxy\": \"localhost\"\n\t\t}}\n\t}},\n\
         \t\"auths\": {{\n\t\t\"other.example.com\": {{\n\t\t\t\"auth\": \"{}\",\n\t\t\t\"email\": \"o@example.com\"\n\t\t}}\n\t}},\n\
         \t\"zUnknown\": {{\"z\": [1, 2.5, null, true, {{\"y\": 1, \"b\": 2}}], \"a\": \"kept\"}},\n\
         \t\"HttpHeaders\": {{\"X-Meta\": \"v\"}},\n\t\"currentContext\": \"default\"\n}}",
        b64("other:pw")
    );
    env.write_config(&original);
    fs::set_permissions(env.config_path(), fs::Permissions::from_mode(0o644)).unwrap();
    let before = env.read_config();

    let mut cfg = env.load();
    // Another program edits the file after we loaded it: its change must survive our write.
    let edited_text = original.replacen("{\n", "{\n\t\"detachKeys\": \"ctrl-x\",\n", 1);
    fs::write(env.config_path(), &edited_text).unwrap();
    let edited = env.read_config();
    assert_eq!(edited["detachKeys"], "ctrl-x");
    assert_eq!(edited["proxies"], before["proxies"]);

    let cred = Credential::new("dave", "d:pass");
    cfg.store("127.0.0.1:5000", &cred).unwrap();
    assert_eq!(mode(&env.config_path()), 0o600);
    let after = env.read_config();
    assert_eq!(
        after["auths"]["127.0.0.1:5000"],
        json!({ "auth": b64("dave:d:pass") })
    );
    let mut expected = edited.clone();
    expected["auths"]["127.0.0.1:5000"] = json!({ "auth": b64("dave:d:pass") });
    assert_eq!(after, expected, "every other key is kept unchanged");
    // Key order is kept too (serde_json's Value would sort it).
    let text = fs::read_to_string(env.config_path()).unwrap();
    let pos = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle} in {text}"))
    };
    assert!(pos("\"proxies\"") < pos("\"auths\"") && pos("\"auths\"") < pos("\"zUnknown\""));
    assert!(pos("\"other.example.com\"") < pos("\"127.0.0.1:5000\""));
    assert!(pos("\"z\"") < pos("\"a\"") && pos("\"y\"") < pos("\"b\""));
    assert!(
        text.contains("\n\t\"auths\": {"),
        "tab-indented like Docker:\n{text}"
    );
    // No temp file is left next to it.
    let names: Vec<String> = fs::read_dir(env.config_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["config.json"]);

    assert_eq!(cfg.get("127.0.0.1:5000").unwrap(), Some(cred.clone()));
    assert_eq!(env.load().get("127.0.0.1:5000").unwrap(), Some(cred));

    assert!(cfg.erase("127.0.0.1:5000").unwrap());
    assert_eq!(cfg.get("127.0.0.1:5000").unwrap(), None);
    assert_eq!(env.load().get("127.0.0.1:5000").unwrap(), None);
    assert_eq!(
        env.read_config(),
        edited,
        "erase restores the file's content"
    );
    assert!(!cfg.erase("127.0.0.1:5000").unwrap());
    assert_eq!(
        cfg.get("other.example.com").unwrap(),
        Some(Credential::new("other", "pw"))
    );
}

#[test]
fn store_creates_the_directory_and_file() {
    let env = Env::new();
    let path = env.dir.path().join("a/b/config.json");
    let mut cfg = DockerConfig::load_from(&path).unwrap();
    assert_eq!(cfg.get("r.example.com").unwrap(), None);
    assert!(!cfg.erase("r.example.com").unwrap());
    assert!(!path.exists(), "erasing nothing writes nothing");
    cfg.store("r.example.com", &Credential::new("u", "p"))
        .unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        format!(
            "{{\n\t\"auths\": {{\n\t\t\"r.example.com\": {{\n\t\t\t\"auth\": \"{}\"\n\t\t}}\n\t}}\n}}",
            b64("u:p")
        ),
        "the same bytes `docker login` writes"
    );
}

#[test]
fn store_replaces_other_spellings_and_keeps_symlinks() {
    let env = Env::new();
    env.write_config(
        &json!({ "auths": {
            "https://r.example.com/v1/": { "auth": b64("old:o") },
            "http://r.example.com": { "auth": b64("older:o") },
            "r.example.com:443": { "auth": b64("port:p") },
        }})
        .to_string(),
    );
    // The config file is a link into a dotfiles directory, as some users keep it.
    let real = env.dir.path().join("dotfiles/docker-config.json");
    fs::create_dir_all(real.parent().unwrap()).unwrap();
    fs::rename(env.config_path(), &real).unwrap();
    std::os::unix::fs::symlink("../dotfiles/docker-config.json", env.config_path()).unwrap();

    let mut cfg = env.load();
    cfg.store("r.example.com", &Credential::new("new", "n"))
        .unwrap();
    assert!(fs::symlink_metadata(env.config_path())
        .unwrap()
        .file_type()
        .is_symlink());
    let auths = env.read_config()["auths"].clone();
    assert_eq!(
        auths,
        json!({
            "r.example.com:443": { "auth": b64("port:p") },
            "r.example.com": { "auth": b64("new:n") },
        })
    );
    assert_eq!(
        serde_json::from_str::<Value>(&fs::read_to_string(&real).unwrap()).unwrap()["auths"],
        auths
    );
    assert_eq!(mode(&real), 0o600);
}

#[test]
fn identity_token_round_trips_through_the_file() {
    let env = Env::new();
    let mut cfg = env.load();
    cfg.store("docker.io", &Credential::identity_token("refresh-1"))
        .unwrap();
    assert_eq!(
        env.read_config(),
        json!({ "auths": { DOCKER_HUB_KEY: { "identitytoken": "refresh-1" } } })
    );
    assert_eq!(
        env.load().get("registry-1.docker.io").unwrap(),
        Some(Credential::identity_token("refresh-1"))
    );
    assert!(cfg.erase("index.docker.io").unwrap());
    assert_eq!(env.read_config(), json!({ "auths": {} }));
}

#[test]
fn creds_store_helper_gets_stores_and_erases() {
    let env = Env::new();
    env.install_test_helper();
    env.write_config(
        &json!({ "credsStore": "test", "auths": { "stale.example.com": {} }, "x": 1 }).to_string(),
    );
    let mut cfg = env.load();
    assert_eq!(cfg.helper_for("r.example.com:5000"), Some("test"));
    assert_eq!(
        cfg.get("r.example.com:5000").unwrap(),
        None,
        "helper: not found"
    );
    assert_eq!(env.helper_calls(), "get r.example.com:5000\n");

    let cred = Credential::new("erin", "e-secret");
    cfg.store("https://r.example.com:5000/v2/", &cred).unwrap();
    assert!(env
        .helper_calls()
        .ends_with("store {\"ServerURL\":\"r.example.com:5000\",\"Username\":\"erin\",\"Secret\":\"e-secret\"}\n"));
    assert_eq!(env.helper_secrets(), 1);
    // Docker's placeholder records the login; the secret is not in the file.
    let file = fs::read_to_string(env.config_path()).unwrap();
    assert!(!file.contains("e-secret"), "{file}");
    assert_eq!(
        env.read_config(),
        json!({ "credsStore": "test", "auths": { "stale.example.com": {}, "r.example.com:5000": {} }, "x": 1 })
    );
    assert_eq!(mode(&env.config_path()), 0o600);

    assert_eq!(env.load().get("r.example.com:5000").unwrap(), Some(cred));
    assert!(cfg.erase("r.example.com:5000").unwrap());
    assert!(env.helper_calls().ends_with("erase r.example.com:5000\n"));
    assert_eq!(env.helper_secrets(), 0);
    assert_eq!(
        env.read_config(),
        json!({ "credsStore": "test", "auths": { "stale.example.com": {} }, "x": 1 })
    );
    assert_eq!(cfg.get("r.example.com:5000").unwrap(), None);
    assert!(
        !cfg.erase("r.example.com:5000").unwrap(),
        "nothing left to erase"
    );

    // The identity-token convention passes through helpers unchanged.
    cfg.store("t.example.com", &Credential::identity_token("tok"))
        .unwrap();
    assert!(env
        .helper_calls()
        .contains("\"Username\":\"<token>\",\"Secret\":\"tok\""));
    assert_eq!(
        cfg.get("t.example.com").unwrap(),
        Some(Credential::identity_token("tok"))
    );
}

#[test]
fn creds_store_falls_back_to_inline_auths() {
    // A file-stored login from before the helper was configured still works.
    let env = Env::new();
    env.install_test_helper();
    env.write_config(
        &json!({ "credsStore": "test", "auths": { "r.example.com": { "auth": b64("f:p") } } })
            .to_string(),
    );
    let cfg = env.load();
    assert_eq!(
        cfg.get("r.example.com").unwrap(),
        Some(Credential::new("f", "p"))
    );
    assert_eq!(
        env.helper_calls(),
        "get r.example.com\n",
        "the helper is asked first"
    );
}

#[test]
fn cred_helpers_entry_wins_over_creds_store() {
    let env = Env::new();
    env.install_test_helper();
    env.write_config(
        &json!({
            "credsStore": "not-installed",
            "credHelpers": { "127.0.0.1:5000": "test", "https://keyed.example.com/v1/": "test" },
        })
        .to_string(),
    );
    let mut cfg = env.load();
    let cred = Credential::new("frank", "f");
    cfg.store("127.0.0.1:5000", &cred).unwrap();
    assert_eq!(cfg.get("127.0.0.1:5000").unwrap(), Some(cred.clone()));
    assert_eq!(cfg.helper_for("keyed.example.com"), Some("test"));
    cfg.store("keyed.example.com", &cred).unwrap();
    assert_eq!(cfg.get("keyed.example.com").unwrap(), Some(cred));
    assert_eq!(
        env.helper_calls()
            .lines()
            .filter(|l| l.starts_with("store "))
            .count(),
        2
    );
    // Any other registry goes to credsStore, whose program does not exist.
    let err = cfg.get("other.example.com").unwrap_err();
    assert!(
        matches!(err, CredentialsError::HelperNotFound { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("docker-credential-not-installed"), "{msg}");
    assert!(msg.contains("other.example.com"), "{msg}");
    assert!(
        msg.contains(&env.config_path().display().to_string()),
        "{msg}"
    );
    assert!(msg.contains(&env.bin().display().to_string()), "{msg}");
}

#[test]
fn docker_hub_is_passed_to_helpers_as_the_index_server_url() {
    let env = Env::new();
    env.install_test_helper();
    env.write_config(r#"{"credHelpers": {"https://index.docker.io/v1/": "test"}}"#);
    let mut cfg = env.load();
    cfg.store("docker.io", &Credential::new("hub", "h"))
        .unwrap();
    assert_eq!(
        cfg.get("registry-1.docker.io").unwrap(),
        Some(Credential::new("hub", "h"))
    );
    assert_eq!(
        env.helper_calls(),
        "store {\"ServerURL\":\"https://index.docker.io/v1/\",\"Username\":\"hub\",\"Secret\":\"h\"}\n\
         get https://index.docker.io/v1/\n"
    );
    assert_eq!(
        env.read_config()["auths"],
        json!({ "https://index.docker.io/v1/": {} })
    );
}

#[test]
fn broken_helper_error_names_the_program_and_its_message() {
    let env = Env::new();
    env.install_helper(
        "broken",
        "#!/bin/sh\ncat > /dev/null\necho 'error: the keychain is locked' >&2\nexit 1\n",
    );
    env.write_config(r#"{"credsStore": "broken"}"#);
    let mut cfg = env.load();
    for (action, err) in [
        ("get", cfg.get("r.example.com").unwrap_err()),
        ("erase", cfg.erase("r.example.com").unwrap_err()),
        (
            "store",
            cfg.store("r.example.com", &Credential::new("u", "p"))
                .unwrap_err(),
        ),
    ] {
        assert!(
            matches!(err, CredentialsError::HelperFailed { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        for needle in [
            "docker-credential-broken",
            "the keychain is locked",
            "r.example.com",
            action,
        ] {
            assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
        }
    }
    assert_eq!(
        fs::read_to_string(env.config_path()).unwrap(),
        r#"{"credsStore": "broken"}"#,
        "a failed store leaves the file alone"
    );

    // A helper answering `get` with something other than JSON.
    env.install_helper("garbled", "#!/bin/sh\necho 'Username=u'\n");
    env.write_config(r#"{"credsStore": "garbled"}"#);
    let msg = env.load().get("r.example.com").unwrap_err().to_string();
    assert!(
        msg.contains("docker-credential-garbled") && msg.contains("r.example.com"),
        "{msg}"
    );
}

#[test]
fn missing_helper_error_names_the_program() {
    let env = Env::new();
    env.write_config(r#"{"credHelpers": {"r.example.com": "nosuch"}}"#);
    let err = env.load().get("r.example.com").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("docker-credential-nosuch"), "{msg}");
    assert!(msg.contains("not found"), "{msg}");
    // A helper file that is not executable does not count as installed.
    env.install_helper("nosuch", "#!/bin/sh\nexit 0\n");
    let helper = env.bin().join("docker-credential-nosuch");
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        env.load().get("r.example.com"),
        Err(CredentialsError::HelperNotFound { .. })
    ));
}

/// Runs only in the child process started by `default_path_follows_docker_config_and_home`,
/// which sets its environment (so no test changes this process's environment).
#[test]
#[ignore = "run in a child process by default_path_follows_docker_config_and_home"]
fn child_reports_default_path() {
    let Some(expected) = std::env::var_os("GANTRY_TEST_EXPECTED_CONFIG") else {
        return;
    };
    assert_eq!(
        DockerConfig::default_path().unwrap(),
        PathBuf::from(&expected)
    );
    let cfg = DockerConfig::load().unwrap();
    assert_eq!(cfg.path(), Path::new(&expected));
    assert_eq!(
        cfg.get("r.example.com").unwrap(),
        std::env::var("GANTRY_TEST_EXPECTED_USER")
            .ok()
            .map(|u| Credential::new(u, "pw"))
    );
}

#[test]
fn default_path_follows_docker_config_and_home() {
    let env = Env::new();
    let home = env.dir.path().join("home");
    let home_config = home.join(".docker/config.json");
    fs::create_dir_all(home_config.parent().unwrap()).unwrap();
    fs::write(
        &home_config,
        json!({ "auths": { "r.example.com": { "auth": b64("home:pw") } } }).to_string(),
    )
    .unwrap();
    env.write_config(
        &json!({ "auths": { "r.example.com": { "auth": b64("dc:pw") } } }).to_string(),
    );
    let run = |docker_config: Option<&Path>, expected: &Path, user: &str| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "child_reports_default_path",
            "--ignored",
            "--nocapture",
        ])
        .env("HOME", &home)
        .env("GANTRY_TEST_EXPECTED_CONFIG", expected)
        .env("GANTRY_TEST_EXPECTED_USER", user);
        match docker_config {
            Some(dir) => cmd.env("DOCKER_CONFIG", dir),
            None => cmd.env_remove("DOCKER_CONFIG"),
        };
        let out = output_with_timeout(&mut cmd, Duration::from_secs(60));
        assert_success("child test", &out);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("1 passed"),
            "the child test did not run:\n{stdout}"
        );
    };
    run(Some(&env.config_dir()), &env.config_path(), "dc");
    run(None, &home_config, "home");
}

/// Runs `docker` (the real CLI) with `config_dir` as `DOCKER_CONFIG`, helpers from `bin`,
/// and no daemon, so `docker login` validates credentials client-side.
fn docker(env: &Env, args: &[&str], password: Option<&str>) -> std::process::Output {
    let docker = require_tool("docker");
    let mut path = std::ffi::OsString::from(env.bin());
    path.push(":");
    path.push(child_path());
    let script = match password {
        Some(_) => "printf %s \"$GANTRY_PW\" | \"$0\" \"$@\"",
        None => "exec \"$0\" \"$@\"",
    };
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .arg(docker)
        .args(args)
        .env("PATH", path)
        .env("DOCKER_CONFIG", env.config_dir())
        .env(
            "DOCKER_HOST",
            format!("unix://{}/no-daemon.sock", env.dir.path().display()),
        )
        .env("GANTRY_PW", password.unwrap_or_default());
    output_with_timeout(&mut cmd, Duration::from_secs(60))
}

fn combined(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
#[ignore = "needs a docker CLI that logs in without a daemon (Docker 23+); Debian ships none, so CI cannot run it: cargo test -- --ignored"]
fn docker_cli_not_in_ci_and_gantry_share_inline_credentials() {
    let registry = DistributionRegistry::start();
    let host = registry.host();
    let env = Env::new();

    // `docker login` → Gantry reads it.
    let out = docker(
        &env,
        &["login", &host, "-u", "alice", "--password-stdin"],
        Some("a:pass"),
    );
    assert_success("docker login", &out);
    assert_eq!(
        env.load().get(&host).unwrap(),
        Some(Credential::new("alice", "a:pass"))
    );

    // Gantry stores → docker finds the stored login.
    let mut cfg = env.load();
    cfg.store(&host, &Credential::new("bob", "b")).unwrap();
    let out = docker(&env, &["login", &host], None);
    let text = combined(&out);
    assert!(
        text.contains("[Username: bob]"),
        "docker did not read Gantry's login:\n{text}"
    );

    // `docker logout` → Gantry sees no credentials; Gantry's erase → docker sees none.
    assert_success("docker logout", &docker(&env, &["logout", &host], None));
    assert_eq!(env.load().get(&host).unwrap(), None);
    let out = docker(
        &env,
        &["login", &host, "-u", "carol", "--password-stdin"],
        Some("c"),
    );
    assert_success("docker login", &out);
    let mut cfg = env.load();
    assert!(cfg.erase(&host).unwrap());
    let text = combined(&docker(&env, &["login", &host], None));
    assert!(
        !text.contains("[Username:"),
        "docker still sees a login:\n{text}"
    );
}

#[test]
#[ignore = "needs a docker CLI that logs in without a daemon (Docker 23+); Debian ships none, so CI cannot run it: cargo test -- --ignored"]
fn docker_cli_not_in_ci_and_gantry_share_a_credential_helper() {
    let registry = DistributionRegistry::start();
    let host = registry.host();
    let env = Env::new();
    env.install_test_helper();
    env.write_config(r#"{"credsStore": "test"}"#);

    // `docker login` stores through the helper → Gantry reads it through the helper.
    let out = docker(
        &env,
        &["login", &host, "-u", "dora", "--password-stdin"],
        Some("d"),
    );
    assert_success("docker login", &out);
    assert!(
        env.helper_calls().contains("store "),
        "{}",
        env.helper_calls()
    );
    assert_eq!(
        env.load().get(&host).unwrap(),
        Some(Credential::new("dora", "d"))
    );

    // Gantry stores through the helper → docker reads it.
    let mut cfg = env.load();
    cfg.store(&host, &Credential::new("ed", "e")).unwrap();
    let text = combined(&docker(&env, &["login", &host], None));
    assert!(
        text.contains("[Username: ed]"),
        "docker did not read Gantry's login:\n{text}"
    );
    assert!(!fs::read_to_string(env.config_path())
        .unwrap()
        .contains("\"e\""));

    // `docker logout` erases through the helper → Gantry finds nothing.
    assert_success("docker logout", &docker(&env, &["logout", &host], None));
    assert_eq!(env.helper_secrets(), 0);
    assert_eq!(env.load().get(&host).unwrap(), None);
}

/// Runs `skopeo` with `authfile` and helpers from `bin`.
fn skopeo(env: &Env, args: &[&str]) -> std::process::Output {
    let mut path = std::ffi::OsString::from(env.bin());
    path.push(":");
    path.push(child_path());
    let mut cmd = Command::new(require_tool("skopeo"));
    cmd.args(args)
        .arg("--authfile")
        .arg(env.config_path())
        .env("PATH", path)
        .env("HOME", env.dir.path())
        .env_remove("REGISTRY_AUTH_FILE");
    output_with_timeout(&mut cmd, Duration::from_secs(60))
}

#[test]
fn skopeo_and_gantry_share_the_file_and_helpers() {
    let registry = DistributionRegistry::start();
    let host = registry.host();
    let env = Env::new();
    env.install_test_helper();
    env.write_config("{}");

    // Inline: skopeo writes, Gantry reads; Gantry writes, skopeo reads.
    let out = skopeo(
        &env,
        &[
            "login",
            "--tls-verify=false",
            "-u",
            "gina",
            "-p",
            "g",
            &host,
        ],
    );
    assert_success("skopeo login", &out);
    assert_eq!(
        env.load().get(&host).unwrap(),
        Some(Credential::new("gina", "g"))
    );
    env.load()
        .store(&host, &Credential::new("hal", "h"))
        .unwrap();
    let out = skopeo(&env, &["login", "--get-login", &host]);
    assert_success("skopeo login --get-login", &out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hal");

    // Through a credHelpers entry, both ways.
    env.write_config(&json!({ "credHelpers": { host.as_str(): "test" } }).to_string());
    let out = skopeo(
        &env,
        &["login", "--tls-verify=false", "-u", "ida", "-p", "i", &host],
    );
    assert_success("skopeo login", &out);
    assert_eq!(env.helper_secrets(), 1);
    assert_eq!(
        env.load().get(&host).unwrap(),
        Some(Credential::new("ida", "i"))
    );
    env.load()
        .store(&host, &Credential::new("jo", "j"))
        .unwrap();
    let out = skopeo(&env, &["login", "--get-login", &host]);
    assert_success("skopeo login --get-login", &out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "jo");
    assert!(env.load().erase(&host).unwrap());
    let out = skopeo(&env, &["login", "--get-login", &host]);
    assert!(
        !out.status.success(),
        "skopeo still sees a login: {}",
        combined(&out)
    );
}
