//! `WWW-Authenticate` challenges as the client reads them from a registry's 401
//! (`gantry_client::auth::Challenge::parse`). A Bearer challenge, written back the way a
//! registry writes one (quoted, escaped parameters), parses to the same challenge.
#![no_main]

use gantry_client::auth::Challenge;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    let Some(challenge) = Challenge::parse(header) else {
        return;
    };
    if let Challenge::Bearer {
        realm,
        service,
        scope,
    } = &challenge
    {
        let mut written = format!("Bearer realm={}", quoted(realm));
        if let Some(service) = service {
            written.push_str(&format!(",service={}", quoted(service)));
        }
        if let Some(scope) = scope {
            written.push_str(&format!(",scope={}", quoted(scope)));
        }
        assert_eq!(
            Challenge::parse(&written).as_ref(),
            Some(&challenge),
            "{written:?}"
        );
        let _ = gantry_client::auth::repository_scope(realm, &["pull"]);
    }
});

fn quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}
