//! Test helper of `gantry-supervise`'s integration tests (not shipped to images):
//!
//! - `supervise-test-game supervise CONFIG.json`: runs the supervisor library in this
//!   process with a JSON [`gantry_supervise::Config`] and exits with the game's exit code;
//! - `supervise-test-game tcp|udp PORT [--delay-ms N] [--up-ms N] [--down-ms N]`: a tiny game
//!   server on 127.0.0.1:PORT that binds after `delay`, and, with `up`/`down`, closes its
//!   socket after `up` ms and binds again `down` ms later (to make probes fail then recover).
//!   It prints `listening <proto> <port>` / `closed <proto> <port>` lines and echoes UDP.

use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::process::ExitCode;
use std::thread::sleep;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("supervise") => supervise(&args[1..]),
        Some(proto @ ("tcp" | "udp")) => game(proto == "tcp", &args[1..]),
        _ => {
            eprintln!("usage: supervise-test-game supervise CONFIG.json | tcp|udp PORT [--delay-ms N] [--up-ms N] [--down-ms N]");
            ExitCode::from(2)
        }
    }
}

fn supervise(args: &[String]) -> ExitCode {
    let Some(path) = args.first() else {
        eprintln!("supervise: CONFIG.json missing");
        return ExitCode::from(2);
    };
    let config: gantry_supervise::Config = match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("supervise: {path}: {e}");
            return ExitCode::from(2);
        }
    };
    match gantry_supervise::run(config) {
        Ok(outcome) => std::process::exit(outcome.exit_code()),
        Err(e) => {
            eprintln!("supervise: {e}");
            std::process::exit(e.exit_code())
        }
    }
}

fn flag(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn game(tcp: bool, args: &[String]) -> ExitCode {
    let Some(port) = args.first().and_then(|p| p.parse::<u16>().ok()) else {
        eprintln!("game: PORT missing or invalid");
        return ExitCode::from(2);
    };
    let proto = if tcp { "tcp" } else { "udp" };
    sleep(Duration::from_millis(flag(args, "--delay-ms").unwrap_or(0)));
    let up = flag(args, "--up-ms").map(Duration::from_millis);
    let down = Duration::from_millis(flag(args, "--down-ms").unwrap_or(0));
    loop {
        let bound_at = Instant::now();
        if tcp {
            let listener = match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("game: bind tcp {port}: {e}");
                    return ExitCode::from(3);
                }
            };
            let _ = listener.set_nonblocking(true);
            say(&format!("listening {proto} {port}"));
            while up.is_none_or(|u| bound_at.elapsed() < u) {
                // Accept and drop connections (the probe only needs the connect).
                let _ = listener.accept();
                sleep(Duration::from_millis(5));
            }
        } else {
            let socket = match UdpSocket::bind(("127.0.0.1", port)) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("game: bind udp {port}: {e}");
                    return ExitCode::from(3);
                }
            };
            let _ = socket.set_read_timeout(Some(Duration::from_millis(20)));
            say(&format!("listening {proto} {port}"));
            let mut buf = [0u8; 1500];
            while up.is_none_or(|u| bound_at.elapsed() < u) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        }
        say(&format!("closed {proto} {port}"));
        sleep(down);
    }
}
