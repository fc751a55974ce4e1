//! `teecast push`: puts a file on many hosts in one command. It starts `teecast recv` on every
//! host through a remote command (`ssh` by default, any launcher with `--rsh`), hands each the
//! fresh random key of this transfer on the launcher's standard input (never in argv, never in a
//! file), reads the port each remote picked from its first lines, sends to them all (directly, or
//! along a tree of relays), and reports every host.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use teecast::auth;
use teecast::digest::DigestAlgorithm;
use teecast::proto::wire;
use teecast::send::{SendOptions, SendReport, Transfer};
use teecast::source::Source;
use teecast::transport::deadline;

use crate::exit::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::hint::send_error_with_hint;
use crate::out::{errln, outln};
use crate::parse::parse_timeout;
use crate::report;

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The file to send, or - for standard input.
    source: PathBuf,
    /// Where it goes: [USER@]HOST:PATH, PATH a directory there (the file goes in under its
    /// name) or a file name; pdsh-style ranges expand: node[01-16]:/srv (at most 10000 hosts
    /// in all).
    targets: Vec<String>,
    /// More targets, one a line (blank lines and lines from # on are skipped); a line without
    /// :PATH takes --path.
    #[arg(long, value_name = "FILE")]
    hosts: Option<PathBuf>,
    /// The PATH of targets given without one.
    #[arg(long, value_name = "PATH")]
    path: Option<String>,
    /// Relay along a tree with K children per host, in the order given (1: a chain).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u8).range(1..))]
    tree: Option<u8>,
    /// The remote command that runs a command on a host, as `RSH HOST COMMAND`; split into words
    /// as a shell would (quotes and backslashes: --rsh "ssh -i '/a b/key'"). With ssh, `--`
    /// goes before the host.
    #[arg(
        long,
        value_name = "RSH",
        default_value = "ssh -o BatchMode=yes",
        env = "TEECAST_RSH"
    )]
    rsh: String,
    /// teecast on the remote hosts.
    #[arg(long, value_name = "PATH", default_value = "teecast")]
    remote_teecast: String,
    /// How long a remote has to start and say where it listens.
    #[arg(long, default_value = "30s", value_parser = parse_timeout)]
    start_timeout: Duration,
    /// Drop a host that accepts no data for this long (also the remotes' own stall timeout).
    #[arg(long, default_value = "30s", value_parser = parse_timeout)]
    stall_timeout: Duration,
    /// Digest: blake3 (the default) or sha256.
    #[arg(long, default_value = "blake3")]
    digest: DigestAlgorithm,
    /// Name announced (default: the source's file name; "stdin" for -).
    #[arg(long)]
    name: Option<String>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Launch at most N remotes at once (as pdsh does): one holds its place until it says where
    /// it listens or fails, so an sshd's limit on logins in progress (MaxStartups) is not hit.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    fanout: u16,
}

/// The most hosts one push takes (ranges expanded): more is a typo in a range, not a fleet.
const MAX_TARGETS: usize = 10_000;

/// One target: where to log in and where the file goes there.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    /// What the remote command is given: `[USER@]HOST`, an IPv6 address without brackets.
    login: String,
    /// The host to connect to (an IPv6 address in brackets).
    host: String,
    /// Where the file goes there.
    path: String,
}

/// Expands pdsh-style ranges (`node[01-03,7]`, several groups too); text without a range
/// (an IPv6 address in brackets, say) is left as it is.
fn expand(text: &str) -> Result<Vec<String>, String> {
    let Some(open) = text.find('[') else {
        return Ok(vec![text.to_string()]);
    };
    let Some(close) = text[open..].find(']').map(|c| open + c) else {
        return Ok(vec![text.to_string()]);
    };
    let inside = &text[open + 1..close];
    if inside.is_empty()
        || !inside
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b',' || b == b'-')
    {
        // Not a range (an IPv6 address): keep it, expand what follows.
        let rest = expand(&text[close + 1..])?;
        return Ok(rest
            .into_iter()
            .map(|r| format!("{}{r}", &text[..=close]))
            .collect());
    }
    let mut out = Vec::new();
    for part in inside.split(',') {
        let (from, to) = part.split_once('-').unwrap_or((part, part));
        let bad = || format!("{text}: bad range [{inside}]");
        let (a, b): (u64, u64) = (
            from.parse().map_err(|_| bad())?,
            to.parse().map_err(|_| bad())?,
        );
        if a > b {
            return Err(bad());
        }
        if b - a >= MAX_TARGETS as u64 {
            return Err(too_many(text));
        }
        let width = if from.starts_with('0') { from.len() } else { 0 };
        let rests = expand(&text[close + 1..])?;
        for n in a..=b {
            for rest in &rests {
                if out.len() == MAX_TARGETS {
                    return Err(too_many(text));
                }
                out.push(format!("{}{n:0width$}{rest}", &text[..open]));
            }
        }
    }
    Ok(out)
}

fn too_many(text: &str) -> String {
    format!("{text}: more than {MAX_TARGETS} hosts; push to at most {MAX_TARGETS} at once")
}

/// Parses `[USER@]HOST:PATH` (`default_path` when there is no `:PATH`).
fn parse_target(text: &str, default_path: Option<&str>) -> Result<Target, String> {
    let (user, rest) = match text.split_once('@') {
        Some((u, r)) if !u.is_empty() && !u.contains([':', '[']) => (Some(u), r),
        _ => (None, text),
    };
    let (host, path) = if rest.starts_with('[') {
        let close = rest
            .find(']')
            .ok_or_else(|| format!("{text}: an unclosed [ in the host"))?;
        let after = &rest[close + 1..];
        (&rest[..=close], after.strip_prefix(':'))
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let path = path
        .filter(|p| !p.is_empty())
        .or(default_path)
        .ok_or_else(|| format!("{text}: give HOST:PATH (or --path PATH)"))?;
    if text.starts_with('-') {
        // It would reach the remote command as an option (`-oProxyCommand=...`).
        return Err(format!("{text}: a target cannot begin with '-'"));
    }
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{text}: no host"));
    }
    // The remote command takes an IPv6 address bare (`ssh ::1`); the connection, in brackets.
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Ok(Target {
        login: user.map_or_else(|| bare.to_string(), |u| format!("{u}@{bare}")),
        host: host.to_string(),
        path: path.to_string(),
    })
}

/// Every target: the arguments, then the lines of `--hosts`, ranges expanded.
fn targets(args: &PushArgs) -> Result<Vec<Target>, String> {
    let mut texts = args.targets.clone();
    if let Some(file) = &args.hosts {
        let body = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        for line in body.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if !line.is_empty() {
                texts.push(line.to_string());
            }
        }
    }
    let mut out = Vec::new();
    for text in texts {
        for one in expand(&text)? {
            if out.len() == MAX_TARGETS {
                return Err(too_many(&text));
            }
            out.push(parse_target(&one, args.path.as_deref())?);
        }
    }
    if out.is_empty() {
        return Err("no target: give HOST:PATH, or --hosts FILE".to_string());
    }
    let named: Vec<String> = out
        .iter()
        .map(|t| format!("{}:{}", t.login, t.path))
        .collect();
    crate::addr::distinct(&named)?;
    Ok(out)
}

/// `text` quoted for a POSIX shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A remote `teecast recv`, started through the remote command.
struct Remote {
    target: Target,
    child: Child,
    /// When its launch began: it has the start timeout from then.
    started: Instant,
    /// Its stderr so far (its log), gathered on a thread of its own.
    log: Arc<Mutex<Vec<String>>>,
    /// Its stderr has ended (it exited, or the launcher did).
    ended: Arc<Mutex<bool>>,
    /// Where it listens, once it said so.
    port: Option<u16>,
    /// Why it did not take part, or failed.
    failure: Option<String>,
    exit: Option<i32>,
}

impl Remote {
    /// Its launch is in flight: it has neither said where it listens nor failed.
    fn launching(&self) -> bool {
        self.port.is_none() && self.failure.is_none()
    }

    fn log_tail(&self) -> String {
        let log = lock(&self.log);
        let last: Vec<&String> = log.iter().rev().take(3).collect();
        let text = last
            .into_iter()
            .rev()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" / ");
        wire::escape_text(&text, 300)
    }
}

/// Starts `teecast recv` on `target` through `rsh`, writing `key` to its standard input;
/// `woken` hears of every line it prints.
fn start(
    target: &Target,
    rsh: &[String],
    args: &PushArgs,
    key: &str,
    index: usize,
    woken: &mpsc::Sender<usize>,
) -> Result<Remote, String> {
    // Every address of the family the sender will connect over.
    let listen = if target.host.starts_with('[') {
        "'[::]:0'"
    } else {
        ":0"
    };
    let mut remote = format!(
        "{} recv --listen {listen} --once --key-file - --into {} --stall-timeout {}ms",
        shell_quote(&args.remote_teecast),
        shell_quote(&target.path),
        args.stall_timeout.as_millis()
    );
    if args.tree.is_some() {
        remote.push_str(" --relay");
    }
    let mut command = Command::new(&rsh[0]);
    command.args(&rsh[1..]);
    if Path::new(&rsh[0]).file_name().is_some_and(|n| n == "ssh") {
        // Whatever the host's name, ssh takes it as the host, never as an option.
        command.arg("--");
    }
    let mut child = command
        .arg(&target.login)
        .arg(&remote)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", wire::escape_text(&rsh[0], 200)))?;
    if let Some(mut stdin) = child.stdin.take() {
        // The launcher may already be gone; its exit says why.
        let _ = stdin.write_all(format!("{key}\n").as_bytes());
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    let ended = Arc::new(Mutex::new(false));
    if let Some(stderr) = child.stderr.take() {
        let (log, ended, woken) = (log.clone(), ended.clone(), woken.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr.take(1 << 20)).lines() {
                let Ok(line) = line else { break };
                lock(&log).push(line);
                let _ = woken.send(index);
            }
            *lock(&ended) = true;
            let _ = woken.send(index);
        });
    }
    Ok(Remote {
        target: target.clone(),
        child,
        started: Instant::now(),
        log,
        ended,
        port: None,
        failure: None,
        exit: None,
    })
}

/// The port in a `teecast: listening on ADDR:PORT` line.
fn listening_port(line: &str) -> Option<u16> {
    line.strip_prefix("teecast: listening on ")?
        .rsplit(':')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Starts every target's remote, at most `args.fanout` launches at once, and waits until each
/// said where it listens, failed, or used up its start timeout (counted from its own start).
fn launch(
    targets: &[Target],
    rsh: &[String],
    args: &PushArgs,
    key: &str,
    woke: mpsc::Sender<usize>,
    woken: &mpsc::Receiver<usize>,
) -> Result<Vec<Remote>, String> {
    let mut remotes: Vec<Remote> = Vec::with_capacity(targets.len());
    loop {
        for r in remotes.iter_mut().filter(|r| r.launching()) {
            settle(r, args.start_timeout);
        }
        let mut in_flight = remotes.iter().filter(|r| r.launching()).count();
        while in_flight < usize::from(args.fanout) && remotes.len() < targets.len() {
            let i = remotes.len();
            remotes.push(start(&targets[i], rsh, args, key, i, &woke)?);
            in_flight += 1;
        }
        if in_flight == 0 {
            return Ok(remotes);
        }
        let first_due = remotes
            .iter()
            .filter(|r| r.launching())
            .filter_map(|r| r.started.checked_add(args.start_timeout))
            .min();
        match first_due {
            Some(due) => {
                let _ = woken.recv_timeout(due.saturating_duration_since(Instant::now()));
            }
            None => {
                let _ = woken.recv();
            }
        }
    }
}

/// Looks at what a remote in launch said: where it listens, that it ended without saying so,
/// or nothing yet (past `timeout` from its start: it is killed).
fn settle(r: &mut Remote, timeout: Duration) {
    let port = lock(&r.log).iter().find_map(|l| listening_port(l));
    if port.is_some() {
        r.port = port;
    } else if *lock(&r.ended) {
        let said = r.log_tail();
        r.failure = Some(match r.child.try_wait() {
            Ok(Some(status)) if said == "\"\"" => format!(
                "did not start: the remote command exited {} and said nothing",
                status.code().unwrap_or(-1)
            ),
            _ => format!("did not start: {said}"),
        });
    } else if r.started.elapsed() >= timeout {
        r.failure = Some("did not say where it listens in time (a hanging login?)".to_string());
        let _ = r.child.kill();
    }
}

/// Waits for every remote to exit by `deadline` (`None`: never), killing the ones that do not.
fn wait_exits(remotes: &mut [Remote], woken: &mpsc::Receiver<usize>, deadline: Option<Instant>) {
    loop {
        for r in remotes.iter_mut().filter(|r| r.exit.is_none()) {
            if let Ok(Some(status)) = r.child.try_wait() {
                r.exit = Some(status.code().unwrap_or(-1));
            }
        }
        if remotes.iter().all(|r| r.exit.is_some()) {
            return;
        }
        let left = deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        });
        if left.is_zero() {
            break;
        }
        // A remote's stderr ends when it exits; look again then, or at least every 100 ms for a
        // launcher that keeps its stderr open after its child is gone.
        let _ = woken.recv_timeout(left.min(Duration::from_millis(100)));
    }
    for r in remotes.iter_mut().filter(|r| r.exit.is_none()) {
        let _ = r.child.kill();
        let _ = r.child.wait();
        r.failure
            .get_or_insert_with(|| "did not exit after its stream; killed".to_string());
    }
}

#[derive(Serialize)]
struct JsonHost<'a> {
    target: String,
    address: Option<String>,
    status: &'static str,
    error: Option<String>,
    remote_exit: Option<i32>,
    path: &'a str,
}

/// Runs `teecast push`.
pub fn run(args: PushArgs) -> u8 {
    let targets = match targets(&args) {
        Ok(t) => t,
        Err(e) => {
            errln!("teecast: {e}");
            return EXIT_USAGE;
        }
    };
    let Some(rsh) = shlex::split(&args.rsh) else {
        errln!(
            "teecast: --rsh {}: an unclosed quote or a trailing backslash",
            wire::escape_text(&args.rsh, 200)
        );
        return EXIT_USAGE;
    };
    if rsh.is_empty() {
        errln!("teecast: --rsh is empty: give the remote command, e.g. ssh");
        return EXIT_USAGE;
    }
    let source = match Source::open(&args.source) {
        Ok(s) => s,
        Err(e) => {
            errln!("teecast: {e}");
            return EXIT_USAGE;
        }
    };
    let key = match auth::generate() {
        Ok(k) => k,
        Err(e) => {
            errln!("teecast: {e}");
            return EXIT_FAILED;
        }
    };
    crate::interrupt::on_ctrl_c(|| {
        "stopped; the remotes end with their connections and keep nothing unconfirmed".to_string()
    });
    let (woke, woken) = mpsc::channel();
    let mut remotes = match launch(&targets, &rsh, &args, &auth::to_hex(&key), woke, &woken) {
        Ok(r) => r,
        Err(e) => {
            errln!("teecast: {e}");
            return EXIT_USAGE;
        }
    };
    let started: Vec<usize> = (0..remotes.len())
        .filter(|&i| remotes[i].port.is_some())
        .collect();
    let addresses: Vec<String> = started
        .iter()
        .map(|&i| {
            let r = &remotes[i];
            format!("{}:{}", r.target.host, r.port.unwrap_or(0))
        })
        .collect();
    let mut sent: Option<SendReport> = None;
    if !addresses.is_empty() {
        let mut options = SendOptions::default()
            .digest(args.digest)
            .stall_timeout(args.stall_timeout)
            .key(key);
        if let Some(k) = args.tree {
            options = options.tree(k);
        }
        if let Some(name) = &args.name {
            options = options.name(name);
        }
        match Transfer::new(&source, &addresses, &options) {
            Ok(t) => {
                report::say_stall_raised(&t);
                sent = Some(t.run());
            }
            Err(e) => {
                errln!("teecast: {}", send_error_with_hint(&e));
                for r in &mut remotes {
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                }
                return EXIT_USAGE;
            }
        }
    }
    // A remote its stream failed on gets none (one that never saw a proof of the key waits
    // for another sender): it goes now, its failure the sender's.
    if let Some(sent) = &sent {
        for (k, &i) in started.iter().enumerate() {
            if !sent.destinations[k].is_ok() {
                let r = &mut remotes[i];
                let _ = r.child.kill();
                r.exit = r.child.wait().ok().map(|s| s.code().unwrap_or(-1));
            }
        }
    }
    // The remotes exit once their stream is done; allow for the last acknowledgements.
    wait_exits(
        &mut remotes,
        &woken,
        deadline(args.stall_timeout.saturating_add(Duration::from_secs(5))),
    );
    let mut hosts = Vec::with_capacity(remotes.len());
    for (i, r) in remotes.iter().enumerate() {
        let dest = started.iter().position(|&s| s == i).and_then(|k| {
            sent.as_ref()
                .map(|s| (&s.destinations[k], addresses[k].clone()))
        });
        let error = match (&r.failure, &dest) {
            (_, Some((d, _))) if !d.is_ok() => d.outcome.as_ref().err().map(crate::hint::with_hint),
            (Some(f), _) => Some(f.clone()),
            (None, _) if r.exit != Some(0) => Some(format!(
                "the remote exited {}: {}",
                r.exit.unwrap_or(-1),
                r.log_tail()
            )),
            _ => None,
        };
        hosts.push(JsonHost {
            target: format!("{}:{}", r.target.login, r.target.path),
            address: dest.map(|(_, a)| a),
            status: if error.is_none() { "ok" } else { "failed" },
            error,
            remote_exit: r.exit,
            path: &r.target.path,
        });
    }
    let ok =
        hosts.iter().all(|h| h.error.is_none()) && sent.as_ref().is_some_and(|s| s.is_success());
    if args.json {
        let transfer = sent
            .as_ref()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&report::json(s)).ok());
        let all = serde_json::json!({"ok": ok, "hosts": hosts, "transfer": transfer});
        outln!("JSON report", "{all}");
    }
    for h in &hosts {
        match &h.error {
            None => errln!("teecast: {}: stored", wire::escape_text(&h.target, 300)),
            Some(e) => errln!(
                "teecast: {}: FAILED: {e}",
                wire::escape_text(&h.target, 300)
            ),
        }
    }
    let good = hosts.iter().filter(|h| h.error.is_none()).count();
    let encrypted = match sent.as_ref().is_some_and(|s| s.encrypted) {
        true => "encrypted",
        false => "not encrypted",
    };
    errln!(
        "teecast: {good} of {} hosts have it stored and verified, {encrypted}",
        hosts.len()
    );
    if ok { EXIT_OK } else { EXIT_FAILED }
}

/// Locks `m` whether or not a thread panicked holding it: the log lines and the flag it guards
/// are each written in one step, so what a panicking thread left is whole.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_expand_like_pdsh() {
        assert_eq!(
            expand("node[01-03,7]:/srv").unwrap(),
            ["node01:/srv", "node02:/srv", "node03:/srv", "node7:/srv"]
        );
        assert_eq!(
            expand("r[1-2]n[1-2]").unwrap(),
            ["r1n1", "r1n2", "r2n1", "r2n2"]
        );
        assert_eq!(expand("[::1]:/srv").unwrap(), ["[::1]:/srv"]);
        assert!(expand("n[3-1]").is_err());
        // Regression: `n[0-99999][0-99999]` expanded to 10^10 names.
        let e = expand("n[0-99999][0-99999]:/srv").unwrap_err();
        assert!(e.contains("more than 10000 hosts"), "{e}");
        assert!(expand("n[1-100][1-101]").is_err());
        assert_eq!(expand("n[1-100][1-100]").unwrap().len(), 10_000);
        assert!(expand("n[a-b]").unwrap() == ["n[a-b]"]);
    }

    #[test]
    fn targets_parse() {
        let t = parse_target("root@node1:/srv/images", None).unwrap();
        assert_eq!(
            (t.login.as_str(), t.host.as_str(), t.path.as_str()),
            ("root@node1", "node1", "/srv/images")
        );
        // Regression: the remote command was given `[::1]`, brackets and all.
        let t = parse_target("[::1]:/x", None).unwrap();
        assert_eq!((t.login.as_str(), t.host.as_str()), ("::1", "[::1]"));
        let t = parse_target("me@[fe80::1]:/x", None).unwrap();
        assert_eq!(t.login, "me@fe80::1");
        // Regression: a target beginning with '-' reached the remote command as an option.
        let e = parse_target("-oProxyCommand=touch:/srv", None).unwrap_err();
        assert!(e.contains("cannot begin with '-'"), "{e}");
        assert_eq!(parse_target("node2", Some("/d")).unwrap().path, "/d");
        assert!(parse_target("node2", None).is_err());
        assert!(parse_target(":/x", None).is_err());
    }

    #[test]
    fn quoting_keeps_a_path_one_word() {
        assert_eq!(shell_quote("a b'c"), r"'a b'\''c'");
    }
}
