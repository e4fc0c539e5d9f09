//! `sentinel-gateway [--config FILE] [serve [--upgrade] [--daemon] | migrate | check-config |
//! check-access … | users … | keys …]`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sentinel_gateway::config::{Config, ConfigError, Sources};
use sentinel_gateway::edge::access;
use sentinel_gateway::ops::admin::{KeysCommand, UsersCommand};
use sentinel_gateway::ops::events::{self, EventsArgs};
use sentinel_gateway::ops::{admin, check, process, server, telemetry};
use sentinel_gateway::store::db::DbError;

/// mimalloc rather than glibc's malloc: a proxied request makes dozens of small allocations
/// (pingora's header maps and futures among them), and `bench/proxy-instructions.sh` showed
/// glibc's malloc/free as the largest single share of what the gateway adds per request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_CONFIG: &str = "conf/gateway.toml";

#[derive(Parser)]
#[command(
    name = "sentinel-gateway",
    version,
    about = "Identity gateway for SentinelShield"
)]
struct Cli {
    /// Configuration file (TOML). Without this flag, conf/gateway.toml is read if it exists.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The .env file read after the config file (the environment still wins).
    #[arg(long, global = true, default_value = ".env")]
    env_file: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve {
        /// Take over from the gateway running with the same `server.runtime_dir`: its
        /// listening sockets are handed over, it finishes what it is serving and exits, and
        /// this process (a new binary, or a new configuration) serves on. No connection is
        /// refused meanwhile.
        #[arg(long)]
        upgrade: bool,
        /// Run in the background: return (exit 0) once serving, or exit 1 if start-up fails.
        /// For systemd's `Type=forking` (see `conf/sentinel-gateway.service`).
        #[arg(long)]
        daemon: bool,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Exit 0 if the gateway on the configured listener answers `GET /health` with 200 within
    /// 3 s, else 1 (for a container's HEALTHCHECK).
    Health,
    /// Validate the configuration and print it, secrets redacted.
    CheckConfig,
    /// What the configured routes and rules answer a caller: which route and rule decide, and
    /// the outcome. Exit 0 allowed, 1 refused (a path no route matches is refused, as the
    /// gateway answers it 404), 2 for a configuration error.
    CheckAccess {
        /// A caller without a token (by default: signed in, email verified, aal1, no roles).
        #[arg(long, conflicts_with_all = ["roles", "unverified", "mfa"])]
        anonymous: bool,
        /// The caller's roles, comma-separated.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// The caller's address is not verified.
        #[arg(long)]
        unverified: bool,
        /// The caller's session passed a second factor (aal2).
        #[arg(long)]
        mfa: bool,
        /// The client's address (as rules with `networks` see it, after trusted proxies).
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
        /// GET, POST, … (any letter case).
        #[arg(value_parser = parse_method)]
        method: http::Method,
        /// The request path, as a client would send it (escapes and all).
        path: String,
    },
    /// Manage users in the configured database (passwords from a prompt or stdin).
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// The keys identity assertions are signed with (list; rotate, or revoke a leaked one).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The audit log, newest first: logins, sessions, passwords, roles, administrators' changes.
    Events(EventsArgs),
}

fn parse_method(text: &str) -> Result<http::Method, String> {
    let upper = text.to_ascii_uppercase();
    if sentinel_gateway::config::RULE_METHODS.contains(&upper.as_str()) {
        http::Method::from_bytes(upper.as_bytes()).map_err(|e| e.to_string())
    } else {
        Err(format!(
            "not one of {}",
            sentinel_gateway::config::RULE_METHODS.join(", ")
        ))
    }
}

/// 2 for a configuration error wherever it is found (the file, the environment, a
/// certificate, a listener, a `database.url` PostgreSQL refuses); 1 for anything else.
fn exit_code(e: &anyhow::Error) -> u8 {
    let configuration = e.chain().any(|cause| {
        cause.is::<ConfigError>()
            || cause
                .downcast_ref::<DbError>()
                .is_some_and(DbError::is_configuration)
    });
    if configuration {
        2
    } else {
        1
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let sources = Sources {
        file: cli
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG)),
        file_required: cli.config.is_some(),
        dotenv: cli.env_file.clone(),
        env: std::env::vars().collect(),
    };
    let config = match Config::load(&sources) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sentinel-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let command = cli.command.unwrap_or(Command::Serve {
        upgrade: false,
        daemon: false,
    });
    if let (Command::Serve { .. }, Err(e)) = (&command, config.require_secret()) {
        eprintln!("sentinel-gateway: {e}");
        return ExitCode::from(2);
    }
    let result = match command {
        Command::Health => process::check_health(&config, std::time::Duration::from_secs(3)),
        // The checks start-up makes, then the configuration as it would serve.
        Command::CheckConfig => check::check(&config).map(|_| {
            print!("{}", config.redacted_toml());
            if let Err(e) = config.require_secret() {
                eprintln!("sentinel-gateway: warning: {e}; serving would refuse to start");
            }
        }),
        Command::Migrate => {
            let _log = telemetry::init(&config.log);
            server::migrate(&config).map(|report| {
                println!(
                    "migrations applied: {}{}",
                    if report.applied.is_empty() {
                        "none (up to date)".to_string()
                    } else {
                        report.applied.join(", ")
                    },
                    if report.adopted_existing_table {
                        " (adopted the existing users table)"
                    } else {
                        ""
                    }
                );
            })
        }
        Command::Serve { upgrade, daemon } => {
            // Before any thread exists (logging starts one): a fork keeps only the caller.
            if daemon {
                if let Err(e) = process::daemonize() {
                    eprintln!("sentinel-gateway: {e:#}");
                    return ExitCode::FAILURE;
                }
            }
            let _log = telemetry::init(&config.log);
            server::serve(config, server::ServeOptions { upgrade })
        }
        Command::CheckAccess {
            anonymous,
            mut roles,
            unverified,
            mfa,
            ip,
            method,
            path,
        } => {
            if let Err(e) = sentinel_gateway::edge::check(&config) {
                eprintln!("sentinel-gateway: {e}");
                return ExitCode::from(2);
            }
            if let Some(bad) = roles
                .iter()
                .find(|r| !sentinel_gateway::config::is_role_name(r))
            {
                eprintln!("sentinel-gateway: --roles: {bad:?} is not a role name");
                return ExitCode::from(2);
            }
            roles.sort();
            roles.dedup();
            let asker = if anonymous {
                access::Asker::Anonymous
            } else {
                access::Asker::SignedIn {
                    roles,
                    email_verified: !unverified,
                    aal2: mfa,
                }
            };
            let verdict = access::explain(&config, &method, &path, &asker, ip);
            print!("{}", verdict.report);
            return if verdict.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        // No log set-up: what the command does is its output, and errors its one line.
        Command::Users { command } => admin::run(&config, command, &mut std::io::stdout()),
        Command::Keys { command } => admin::run_keys(&config, command, &mut std::io::stdout()),
        Command::Events(args) => events::run(&config, args, &mut std::io::stdout()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sentinel-gateway: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(exit_code(&e))
        }
    }
}
