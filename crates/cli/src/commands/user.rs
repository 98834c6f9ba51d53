//! `gantry user`: manage the registry's users file.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

/// Arguments of `gantry user`.
#[derive(Args)]
pub struct UserArgs {
    #[command(subcommand)]
    pub command: UserCommand,
}

/// `gantry user` subcommands.
#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user (or change their password) in the users file, hashed with argon2id.
    Add(AddArgs),
    /// Remove a user from the users file.
    Remove(RemoveArgs),
    /// List the users in the users file.
    List(FileArg),
}

/// The users file.
#[derive(Args)]
pub struct FileArg {
    /// Users file [default: gantry-registry/auth/users, the file `gantry serve` reads
    /// with the default root].
    #[arg(long)]
    pub file: Option<PathBuf>,
}

/// Arguments of `gantry user add`.
#[derive(Args)]
pub struct AddArgs {
    /// User name (letters, digits, `.`, `_`, `-`, `@`).
    pub name: String,
    #[command(flatten)]
    pub file: FileArg,
    /// Read the password from the first line of standard input instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
}

/// Arguments of `gantry user remove`.
#[derive(Args)]
pub struct RemoveArgs {
    /// User name.
    pub name: String,
    #[command(flatten)]
    pub file: FileArg,
}

impl FileArg {
    fn path(&self) -> PathBuf {
        self.file.clone().unwrap_or_else(|| {
            gantry_registry::TokenAuth::default_users_path(&gantry_registry::Config::default().root)
        })
    }
}

/// Runs `gantry user`.
pub fn run(args: UserArgs) -> anyhow::Result<()> {
    match args.command {
        UserCommand::Add(a) => add(a),
        UserCommand::Remove(a) => {
            let path = a.file.path();
            let mut users = gantry_registry::Users::load(&path)?;
            if !users.remove(&a.name) {
                bail!("no user {:?} in {}", a.name, path.display());
            }
            users.save(&path)?;
            eprintln!("removed user {} from {}", a.name, path.display());
            Ok(())
        }
        UserCommand::List(f) => {
            for name in gantry_registry::Users::load(&f.path())?.names() {
                println!("{name}");
            }
            Ok(())
        }
    }
}

fn add(args: AddArgs) -> anyhow::Result<()> {
    let path = args.file.path();
    let password = if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        if !std::io::stdin().is_terminal() {
            bail!("standard input is not a terminal: pass --password-stdin to read the password from it");
        }
        let first = prompt("Password: ")?;
        let second = prompt("Repeat password: ")?;
        if first != second {
            bail!("the passwords differ");
        }
        first
    };
    let existed = gantry_registry::add_user(&path, &args.name, &password)
        .with_context(|| format!("adding user {}", args.name))?;
    eprintln!(
        "{} user {} in {}",
        if existed { "updated" } else { "added" },
        args.name,
        path.display()
    );
    Ok(())
}

/// Reads a line from the terminal with echo off.
fn prompt(message: &str) -> anyhow::Result<String> {
    eprint!("{message}");
    std::io::stderr().flush()?;
    let echo_off = EchoOff::new();
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    drop(echo_off);
    eprintln!();
    read.context("reading the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Turns terminal echo off on stdin until dropped.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> Self {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a zeroed termios they fill in.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return EchoOff(None);
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            t.c_lflag |= libc::ECHONL;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return EchoOff(None);
            }
            EchoOff(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = self.0 {
            // SAFETY: restores the attributes read in `new`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &saved);
            }
        }
    }
}
