//! The command line (docs/configuration.md).
//!
//! Exit status: 0 success, 1 runtime failure, 2 usage or configuration error. A configuration
//! error exits 2 so that systemd's `RestartPreventExitStatus=2` keeps a broken config from
//! restart-looping.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{self, Settings};
use crate::journal;
use crate::signal::{reload_signal, shutdown_signal};

/// Exit status for a runtime failure.
const EXIT_RUNTIME: u8 = 1;
/// Exit status for a usage or configuration error.
const EXIT_CONFIG: u8 = 2;

/// posgw: point-of-sale integration gateway for one store.
#[derive(Debug, Parser)]
#[command(name = "posgw", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the store gateway in the foreground.
    Run {
        /// Configuration file.
        #[arg(
            short = 'c',
            long = "config",
            env = "POSGW_CONFIG",
            default_value = "/etc/posgw/posgw.toml"
        )]
        config: PathBuf,
    },
    /// Load and validate the configuration, drop-ins and device profiles; print a summary.
    CheckConfig {
        /// Configuration file.
        #[arg(
            short = 'c',
            long = "config",
            env = "POSGW_CONFIG",
            default_value = "/etc/posgw/posgw.toml"
        )]
        config: PathBuf,
    },
    /// A simulated store on this machine: a pseudo-terminal scanner feeding the real gateway.
    Demo {
        /// Folder for the demo store's config, devices and journal (default: $TMPDIR/posgw-demo).
        #[arg(long = "data")]
        data: Option<PathBuf>,
        /// Stop after this long (e.g. "30s", "5m"); default: until Ctrl-C.
        #[arg(long = "for", value_parser = parse_duration)]
        run_for: Option<std::time::Duration>,
        /// A ten times busier store: customers and the clerk at ten times the pace.
        #[arg(long)]
        fast: bool,
    },
    /// Run the reference HQ receiver.
    Hq {
        /// Configuration file with `[hq]` and `[[store]]`.
        #[arg(
            short = 'c',
            long = "config",
            env = "POSGW_CONFIG",
            default_value = "/etc/posgw/posgw.toml"
        )]
        config: PathBuf,
        #[command(subcommand)]
        command: Option<HqCommand>,
    },
    /// Print a running gateway's devices, journal backlog, uplink state and open prompts.
    Status {
        /// The gateway's local API.
        #[arg(long = "api", default_value = "http://127.0.0.1:7380")]
        api: String,
    },
    /// Inspect or repair the journal (offline: stop the gateway first).
    Journal {
        /// Which journal operation.
        #[command(subcommand)]
        command: JournalCommand,
    },
}

/// `posgw journal …`.
#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Journal figures.
    Stats {
        /// The gateway's data_dir.
        #[arg(long = "data")]
        data: PathBuf,
    },
    /// Every record still in the journal, one JSON record a line, in journal order.
    Dump {
        /// The gateway's data_dir.
        #[arg(long = "data")]
        data: PathBuf,
        /// Dump the dead-letter set (records HQ refused) instead.
        #[arg(long)]
        dead: bool,
    },
    /// Copy what can be read out of quarantined (damaged) journals into the live one.
    Salvage {
        /// The gateway's data_dir.
        #[arg(long = "data")]
        data: PathBuf,
        /// Configuration naming the store and gateway; needed only when there is no live
        /// journal to read them from.
        #[arg(short = 'c', long = "config", env = "POSGW_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// Parses the arguments, runs the command and maps the outcome to the contract's exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Run { config } => run(&config),
        Command::CheckConfig { config } => check_config(&config),
        Command::Demo {
            data,
            run_for,
            fast,
        } => demo(data, run_for, fast),
        Command::Hq {
            command: Some(HqCommand::Passwd),
            ..
        } => hq_passwd(),
        Command::Hq {
            config,
            command: Some(HqCommand::CheckConfig),
        } => hq_check_config(&config),
        Command::Hq {
            config,
            command: None,
        } => hq(&config),
        Command::Status { api } => status(&api),
        Command::Journal { command } => journal_command(command),
    }
}

fn load_config(path: &Path) -> Result<Settings, ExitCode> {
    config::load(path).map_err(|error| {
        eprintln!("{error}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn check_config(path: &Path) -> ExitCode {
    match load_config(path) {
        Ok(settings) => {
            print!("{}", settings.summary());
            println!("configuration ok");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    config::parse_duration(text).map_err(|e| e.to_string())
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| {
            runtime_failure(&anyhow::anyhow!(error).context("cannot start the runtime"))
        })
}

fn demo(data: Option<PathBuf>, run_for: Option<std::time::Duration>, fast: bool) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(crate::demo::run(data, run_for, fast)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => runtime_failure(&error),
    }
}

fn status(api: &str) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let url = format!("{}/api/v1/status", api.trim_end_matches('/'));
    let outcome = runtime.block_on(async {
        let response = reqwest::Client::new()
            .get(&url)
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await
            .with_context(|| format!("cannot reach the gateway at {url}; is posgw running?"))?;
        anyhow::ensure!(
            response.status().is_success(),
            "{url} answered {}",
            response.status()
        );
        response
            .json::<serde_json::Value>()
            .await
            .with_context(|| format!("{url} did not answer with status JSON"))
    });
    match outcome {
        Ok(body) => {
            print!("{}", crate::status::render(&body));
            ExitCode::SUCCESS
        }
        Err(error) => runtime_failure(&error),
    }
}

/// Subcommands of `posgw hq`.
#[derive(Debug, Subcommand)]
pub enum HqCommand {
    /// Read a password from stdin (without echo on a terminal, asked twice) and print its
    /// argon2id hash, for `password_hash` of a `[[user]]` in hq.toml.
    Passwd,
    /// Load and validate the HQ configuration; with `[storage] backend = "postgres"`, also
    /// connect and print PostgreSQL's version and the schema's (changing nothing). Exits 2 on
    /// configuration errors, 1 when the database cannot be reached.
    CheckConfig,
}

fn hq_check_config(path: &Path) -> ExitCode {
    let settings = match crate::hq::load_config(path) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    println!(
        "{} store(s), {} region(s), {} user(s), {} alert rule(s), {} notify target(s)",
        settings.stores.len(),
        settings.regions.len(),
        settings.users.len(),
        settings.alert_rule_count(),
        settings.notify_target_count()
    );
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(crate::hq::describe_storage(&settings)) {
        Ok(storage) => {
            println!("{storage}");
            println!("configuration ok");
            ExitCode::SUCCESS
        }
        Err(error) => runtime_failure(&error),
    }
}

fn hq_passwd() -> ExitCode {
    match read_new_password() {
        Ok(password) => match crate::hq::hash_password(&password) {
            Ok(hash) => {
                println!("{hash}");
                ExitCode::SUCCESS
            }
            Err(error) => runtime_failure(&error),
        },
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// The password: from a terminal, typed twice without echo; else the first line of stdin.
fn read_new_password() -> anyhow::Result<String> {
    use std::io::{BufRead as _, IsTerminal as _};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        let password = line.trim_end_matches(['\n', '\r']).to_string();
        anyhow::ensure!(!password.is_empty(), "no password on stdin");
        return Ok(password);
    }
    let first = read_hidden("Password: ")?;
    anyhow::ensure!(!first.is_empty(), "an empty password is not allowed");
    let second = read_hidden("Again: ")?;
    anyhow::ensure!(first == second, "the two passwords differ");
    Ok(first)
}

/// Prompts on stderr and reads one line from the terminal with echo off.
fn read_hidden(prompt: &str) -> anyhow::Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    use std::io::{BufRead as _, Write as _};
    let stdin = std::io::stdin();
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let saved = tcgetattr(&stdin)?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet)?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let restored = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    read?;
    restored?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

fn hq(path: &Path) -> ExitCode {
    let settings = match crate::hq::load_config(path) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Sockets are capped below the open-files limit; the higher the limit, the more stores.
    crate::serve::raise_open_files_limit();
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let outcome = runtime.block_on(async {
        // Caught before the port is bound: see `run`.
        let shutdown = shutdown_signal();
        let hangups = crate::signal::reload_signal();
        crate::hq::run(settings, shutdown, hangups).await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => runtime_failure(&error),
    }
}

fn run(path: &Path) -> ExitCode {
    let settings = match load_config(path) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    // API sockets are capped below the open-files limit (see `serve`), so raising the limit
    // first only gives the journal more room.
    crate::serve::raise_open_files_limit();
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let outcome = runtime.block_on(async {
        // SIGTERM, SIGINT and SIGHUP are caught before the API is bound: once it is, a client
        // may see the gateway and stop or reload it at once, before `gateway::run` has started
        // everything (systemd sends `reload` once READY, and SIGHUP's default action would end
        // the process without a clean shutdown).
        let shutdown = shutdown_signal();
        let hangups = reload_signal();
        let listener = crate::gateway::bind_api(&settings).await?;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!("api listening on http://{addr}");
        }
        crate::gateway::run(settings, listener, shutdown, hangups).await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => runtime_failure(&error),
    }
}

fn journal_command(command: JournalCommand) -> ExitCode {
    let outcome = match command {
        JournalCommand::Stats { data } => {
            journal::offline_stats(&data).map(|stats| print!("{stats}"))
        }
        JournalCommand::Dump { data, dead } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            // `dump` flushes what it wrote.
            journal::dump(&data, dead, &mut out).map(|_| ())
        }
        JournalCommand::Salvage { data, config } => return salvage(&data, config.as_deref()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => runtime_failure(&anyhow::anyhow!(error)),
    }
}

fn salvage(data: &Path, config: Option<&Path>) -> ExitCode {
    let (store, gateway) = match config {
        Some(path) => match load_config(path) {
            Ok(settings) => (settings.gateway.store, settings.gateway.id),
            Err(code) => return code,
        },
        None => match journal::identity(data) {
            Ok(Some(identity)) => identity,
            Ok(None) => {
                eprintln!(
                    "error: there is no live journal in {} to take the store and gateway from; pass -c CONFIG",
                    data.display()
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            Err(error) => return runtime_failure(&anyhow::anyhow!(error)),
        },
    };
    let config = journal::JournalConfig {
        data_dir: data.to_path_buf(),
        store,
        gateway,
        flush: std::time::Duration::ZERO,
        version: crate::VERSION,
        max_bytes: None,
    };
    match journal::salvage(data, &config) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => runtime_failure(&anyhow::anyhow!(error)),
    }
}

/// Logs the whole error chain, one cause per line, and returns exit status 1.
fn runtime_failure(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error}");
    for cause in error.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    ExitCode::from(EXIT_RUNTIME)
}

/// Logs go to stderr: plain lines without timestamps under journald (which adds its own), JSON
/// when `POSGW_LOG_FORMAT=json`, else the usual human format. `RUST_LOG` filters (default info).
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var("POSGW_LOG_FORMAT").is_ok_and(|format| format == "json");
    if json {
        builder.json().init();
    } else if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}
