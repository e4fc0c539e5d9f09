//! Start-up and the pingora server: check the listen address, migrate, build the state, run
//! until SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pingora::proxy::http_proxy;
use pingora::server::configuration::ServerConf;
use pingora::server::{
    RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch, UnixShutdownSignalWatch,
};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::config::{Config, ConfigError, Listeners};
use crate::credentials::assertion::Assertions;
use crate::credentials::rate_limit::{LimiterJanitor, RateLimits};
use crate::edge::front::{Admission, ClientTimeouts, Deadlines, Front};
use crate::edge::proxy::Gateway;
use crate::edge::upstreams;
use crate::edge::Edge;
use crate::ops::check::{check, Checked};
use crate::ops::handover::{self, Handover, PidFile, RuntimeDir};
use crate::ops::process;
use crate::own::app::App;
use crate::store::db;
use crate::store::user_cache::{UserCache, UserChangeListener};

/// Migrates the database once on a short-lived runtime of its own (waiting for PostgreSQL up to
/// `database.startup_wait_seconds`).
pub fn migrate(config: &Config) -> anyhow::Result<db::MigrationReport> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the start-up runtime")?;
    let report = rt.block_on(connect_and_migrate(&config.database, None))?;
    Ok(report)
}

/// Reaches PostgreSQL, migrates it, and publishes this instance's identity assertion key (so
/// that no assertion is signed before every instance's JWKS can list its key).
async fn connect_and_migrate(
    database: &crate::config::DatabaseConfig,
    assertions: Option<&Assertions>,
) -> Result<db::MigrationReport, db::DbError> {
    let bound = Duration::from_secs(database.startup_wait_seconds);
    let mut client = db::connect_waiting(database, bound).await?;
    let report = db::migrate(&mut client).await?;
    if let Some(assertions) = assertions {
        assertions
            .maintain(&mut client)
            .await
            .map_err(|e| db::DbError::Query(format!("identity assertion keys: {e:?}")))?;
    }
    Ok(report)
}

/// Loads the identity assertion keys on a short-lived runtime (`serve --upgrade`, which has
/// migrated already and is ready from its first request).
fn load_keys(config: &Config, app: &App) -> anyhow::Result<()> {
    let Some(assertions) = app.assertions.as_deref() else {
        return Ok(());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the start-up runtime")?;
    rt.block_on(async {
        let bound = Duration::from_secs(config.database.startup_wait_seconds);
        let mut client = db::connect_waiting(&config.database, bound).await?;
        assertions
            .maintain(&mut client)
            .await
            .map_err(|e| anyhow::anyhow!("identity assertion keys: {e:?}"))
    })
}

/// What serves requests, built from the configuration: the gateway's API and the edge, with
/// what keeps them current for the caller to run: the user cache they share (which answers
/// from memory only while `changes` runs), the rate limits, the routes' health checks.
/// Nothing is reached yet: the database is not asked until the API is opened.
pub struct Assembly {
    pub app: Arc<App>,
    pub edge: Arc<Edge>,
    pub users: Arc<UserCache>,
    pub limiters: Arc<RateLimits>,
    pub health_checks: Vec<upstreams::HealthCheck>,
    /// PostgreSQL's notifications of changed users (and signing keys).
    pub changes: UserChangeListener,
}

pub fn assemble(config: &Config) -> anyhow::Result<Assembly> {
    let pool = db::pool(&config.database)?;
    let interval = Duration::from_millis(config.proxy.health_check_interval_ms);
    let dns_refresh = Duration::from_secs(config.proxy.upstream_dns_refresh_seconds);
    let mut routes = Vec::with_capacity(config.routes.len());
    let mut health_checks = Vec::with_capacity(config.routes.len());
    for route in &config.routes {
        let (route, checker) = upstreams::build(route, interval, dns_refresh)?;
        routes.push(route);
        health_checks.push(checker);
    }
    let users = Arc::new(UserCache::new(
        Duration::from_secs(config.proxy.user_cache_ttl_seconds),
        100_000,
        db::proxy_pool(&config.database)?,
        Duration::from_millis(config.database.acquire_timeout_ms),
        config.auth.max_sessions_per_user,
    ));
    let limiters = Arc::new(
        RateLimits::new(&config.rate_limit, config.mfa.attempts_per_5_minutes)
            .map_err(|e| ConfigError::Invalid(format!("rate_limit: {e}")))?,
    );
    let edge = Arc::new(Edge::new(config, routes, &users)?);
    let app = Arc::new(App::new(
        config,
        pool,
        Arc::clone(&users),
        Arc::clone(&limiters),
    )?);
    let changes = UserChangeListener {
        cache: Arc::clone(&users),
        database: config.database.clone(),
        keys_changed: app.assertions.as_ref().map(|a| Arc::clone(&a.keys_changed)),
    };
    Ok(Assembly {
        app,
        edge,
        users,
        limiters,
        health_checks,
        changes,
    })
}

/// Opens the API of a process whose database was migrated before it was assembled ([`migrate`]):
/// this instance's identity assertion keys are loaded, and requests that need the database
/// are answered from now on.
pub fn open_at_once(config: &Config, app: &App) -> anyhow::Result<()> {
    load_keys(config, app)?;
    app.set_ready();
    Ok(())
}

/// Serves until SIGTERM/SIGINT. Every start-up failure is returned (one line, non-zero exit),
/// never a panic or a process left without a listener. The listener comes up before the
/// database is reached: `/health` answers at once, `/ready` and everything that needs the
/// database answer 503 until [`DatabaseStartup`] has reached PostgreSQL and migrated it, and
/// a database that does not answer within `database.startup_wait_seconds` (or cannot be
/// adopted) ends the process with one line.
///
/// With `options.upgrade` it takes over from the gateway running with the same runtime
/// directory instead: the database is reached and migrated first, then that gateway is asked
/// (SIGQUIT) to hand its listening sockets over; it stops accepting a few seconds later,
/// finishes its requests and exits, while this process serves on the same sockets.
pub fn serve(config: Config, options: ServeOptions) -> anyhow::Result<()> {
    config.require_secret()?;
    let Checked {
        listeners,
        certificate,
    } = check(&config)?;
    let Listeners {
        public: addrs,
        tls: tls_addrs,
        admin: admin_addrs,
    } = listeners;
    let runtime_dir = RuntimeDir::open(config.server.runtime_dir.clone())?;
    // The gateway to take over from: its listening sockets come to this process, so they are
    // not bound here. The hand-over socket is listened on at once (before migrating), so that
    // whoever connects to it early waits in its backlog to be checked and refused.
    let predecessor = if options.upgrade {
        if runtime_dir.owned {
            anyhow::bail!(
                "--upgrade needs server.runtime_dir (SENTINEL_RUNTIME_DIR): the directory where \
                 the running gateway keeps its pid file and upgrade socket"
            );
        }
        let pid = handover::running_gateway(&runtime_dir.path)?;
        Some((pid, Handover::prepare(&runtime_dir.path, pid)?))
    } else {
        // Pingora retries a failed bind for 30 s and then panics inside a task while the
        // process stays up: find out now instead.
        for addr in &addrs {
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr}"))?;
        }
        for addr in &admin_addrs {
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr} (admin.listen)"))?;
        }
        for addr in &tls_addrs {
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr} (tls.listen)"))?;
        }
        None
    };
    if predecessor.is_some() {
        // The database is reached and migrated before the sockets are taken over: from its
        // first request on, this process answers as the one it replaces did, never 503.
        migrate(&config)?;
    }

    // Defined now, not at a first request.
    let _ = crate::metrics::metrics();
    let Assembly {
        app,
        edge,
        users,
        limiters,
        health_checks,
        changes: listener,
    } = assemble(&config)?;
    let janitor = LimiterJanitor {
        limiters: Arc::clone(&limiters.local),
        every: Duration::from_secs(30),
    };
    let outcome = Arc::new(StartupOutcome::default());
    let database_startup = DatabaseStartup {
        app: Arc::clone(&app),
        database: config.database.clone(),
        outcome: Arc::clone(&outcome),
    };
    let mail_worker = crate::mail::worker::MailWorker::new(
        app.pool.clone(),
        crate::credentials::one_time::SealKey::derive(config.auth.secret_key.expose()),
        Arc::clone(&app.ready),
        Arc::clone(&app.mail_wake),
        config.mail.clone(),
    );
    if config.mail.transport == crate::config::MailTransport::Log
        && config.server.environment == crate::config::Environment::Production
    {
        tracing::warn!(
            "mail.transport is \"log\": reset and verification links are written to the log \
             and no mail is sent; set mail.transport = \"smtp\" in production"
        );
    }
    let upgraded_watcher = crate::edge::upgraded::UpgradedWatcher {
        upgraded: Arc::clone(&edge.upgraded),
        changes: std::sync::Mutex::new(Some(users.subscribe())),
    };

    if predecessor.is_some() {
        open_at_once(&config, &app)?;
    }
    let server_conf = |upgrade_sock: &std::path::Path| ServerConf {
        threads: config.server.threads,
        work_stealing: config.server.work_stealing,
        pid_file: runtime_dir.path.join("pingora.pid").display().to_string(),
        upgrade_sock: upgrade_sock.display().to_string(),
        grace_period_seconds: Some(config.server.shutdown_grace_seconds),
        graceful_shutdown_timeout_seconds: Some(config.server.shutdown_timeout_seconds),
        // Tokio's timers instead of pingora's for every timeout of a second or more (upstream
        // read/write, downstream keep-alive): pingora's take two clock reads, a lock and a
        // notifier per registration. With tokio's a proxied request costs about 2.4k fewer
        // instructions (93.0k -> 90.7k) and bench/proxy.sh's (e) gained about 5%.
        // Sub-second timeouts stay on pingora's timer wheel.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ca_file: config.proxy.upstream_ca_file.clone(),
        // Pingora waits this many seconds for the sockets (the relay passes them on at once).
        upgrade_sock_connect_accept_max_retries: Some(HANDOVER_WAIT.as_secs() as usize),
        ..ServerConf::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade: predecessor.is_some(),
        ..Default::default()
    };
    // Where this process sends its sockets when it is the one replaced.
    let public_socket = runtime_dir.path.join(handover::HANDOVER_SOCKET);
    let mut server = match &predecessor {
        Some((pid, handover)) => {
            // Pingora receives at its `upgrade_sock` as it starts: there, a socket private to
            // the relay; once started it sends (when replaced) to the public one.
            let receiving = server_conf(&handover.pingora_socket());
            let mut server = Server::new_with_opt_and_conf(Some(opt), receiving);
            server.configuration = Arc::new(server_conf(&public_socket));
            tracing::info!(pid, "taking over the running gateway's listening sockets");
            server
        }
        None => Server::new_with_opt_and_conf(Some(opt), server_conf(&public_socket)),
    };
    match predecessor {
        Some((pid, handover)) => {
            let relay = handover.relay(HANDOVER_WAIT);
            handover::ask_to_hand_over(pid)?;
            server.bootstrap();
            let (handover, relayed) = relay
                .join()
                .map_err(|_| anyhow::anyhow!("the socket hand-over thread panicked"))?;
            drop(handover);
            relayed?;
        }
        None => server.bootstrap(),
    }
    let _pid_file = PidFile::write(&runtime_dir.path)?;
    let deadlines = Deadlines::start().context("cannot start the request head deadline thread")?;
    let admission = Arc::new(Admission::new(
        config.server.max_connections_per_ip,
        max_connections(config.server.max_connections),
        edge.trusted_proxies.clone(),
    ));
    let front = Front::new(
        http_proxy(
            &server.configuration,
            Gateway::new(Arc::clone(&app), Arc::clone(&edge)),
        ),
        deadlines,
        ClientTimeouts {
            head: Duration::from_millis(config.server.header_timeout_ms),
            keepalive: Duration::from_secs(config.server.keepalive_seconds),
            send: (config.server.send_timeout_ms > 0)
                .then(|| Duration::from_millis(config.server.send_timeout_ms)),
        },
        admission,
    );
    let front = match config.server.http1_engine {
        crate::config::Http1Engine::Pingora => front,
        crate::config::Http1Engine::Hyper => front.with_hyper(
            crate::edge::decision::Decider {
                app: Arc::clone(&app),
                edge: Arc::clone(&edge),
            },
            &server.configuration,
        ),
    };
    let handshake_deadline = front.handshake_deadline();
    if !admin_addrs.is_empty() {
        let mut admin = Service::new(
            "admin".to_string(),
            pingora::apps::http_app::HttpServer::new_app(crate::ops::scrape::MetricsApp {
                app: Arc::clone(&app),
                edge: Arc::clone(&edge),
            }),
        );
        for addr in &admin_addrs {
            admin.add_tcp(&addr.to_string());
        }
        admin.threads = Some(1);
        server.add_service(admin);
    }
    let mut service = Service::new("sentinel-gateway".to_string(), front);
    for addr in &addrs {
        service.add_tcp(&addr.to_string());
    }
    if let Some(certificate) = &certificate {
        service.endpoints().set_pre_tls_callback(handshake_deadline);
        for addr in &tls_addrs {
            let settings = crate::edge::tls::settings(Arc::clone(certificate))?;
            service.add_tls_with_settings(&addr.to_string(), None, settings);
        }
        server.add_service(background_service(
            "certificate reloader",
            crate::edge::tls::CertificateReloader(Arc::clone(certificate)),
        ));
    }
    server.add_service(service);
    server.add_service(background_service("database start-up", database_startup));
    server.add_service(background_service("user change listener", listener));
    server.add_service(background_service("upgraded connections", upgraded_watcher));
    if app.assertions.is_some() {
        server.add_service(background_service(
            "assertion keys",
            AssertionKeys(Arc::clone(&app)),
        ));
    }
    server.add_service(background_service("rate limiter janitor", janitor));
    server.add_service(background_service("mail worker", mail_worker));
    server.add_service(background_service(
        "audit log pruning",
        crate::ops::events::Pruner {
            app: Arc::clone(&app),
            retention_days: config.audit.retention_days,
        },
    ));
    server.add_service(background_service(
        "ready notice",
        ReadyNotice(addrs.clone()),
    ));
    for checker in health_checks {
        server.add_service(checker);
    }
    tracing::info!(listen = ?addrs, tls = ?tls_addrs, admin = ?admin_addrs, threads = config.server.threads,
        "sentinel-gateway listening");
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals(Arc::clone(&outcome))),
    });
    tracing::info!("sentinel-gateway stopped");
    match outcome.failure() {
        Some(reason) => Err(reason.into()),
        None => Ok(()),
    }
}

/// The open-file limit raised to its hard limit (as nginx's `worker_rlimit_nofile` would be
/// set), and the client connections the gateway may hold: `configured`, or with 0 half of
/// what the limit allows (a proxied request may hold an upstream connection too) less a
/// reserve for PostgreSQL, Redis, health checks and logs.
fn max_connections(configured: usize) -> usize {
    // SAFETY: an all-zero rlimit is a valid value for getrlimit to fill.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: get/setrlimit with a valid resource and struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    if configured > 0 {
        return configured;
    }
    let files = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    (files.saturating_sub(256) / 2).max(64)
}

/// How long `serve --upgrade` waits for the running gateway's sockets.
const HANDOVER_WAIT: Duration = Duration::from_secs(30);

/// How `serve` starts.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServeOptions {
    /// Take over from the gateway running with the same runtime directory (`serve --upgrade`).
    pub upgrade: bool,
}

/// Tells the parent of `serve --daemon` that the server is serving: once a connection to each
/// public address succeeds (the listening service binds its sockets as it starts).
struct ReadyNotice(Vec<std::net::SocketAddr>);

#[async_trait::async_trait]
impl BackgroundService for ReadyNotice {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        for addr in &self.0 {
            let target = process::reachable(*addr);
            while tokio::net::TcpStream::connect(target).await.is_err() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
        process::notify_ready();
    }
}

/// How the database start-up ended, when it failed: the process then stops with this line.
#[derive(Default)]
struct StartupOutcome {
    failed: tokio::sync::Notify,
    reason: std::sync::Mutex<Option<db::DbError>>,
}

impl StartupOutcome {
    fn fail(&self, reason: db::DbError) {
        let line = format!("{:#}", anyhow::Error::from(reason.clone())).replace('\n', " ");
        let code = if reason.is_configuration() { 2 } else { 1 };
        *self
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
        // A stored permit: the signal watcher sees it whenever it starts waiting.
        self.failed.notify_one();
        // Pingora's fast shutdown can hang: a listener whose accept fails at once in a
        // runtime being shut down spins without yielding, and the runtime waits for it for
        // ever (seen once in CI: one thread at 100% logging "Accept() failed"). A start-up that
        // failed ends here within seconds, with its one line, whatever the shutdown does.
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(5));
            eprintln!("sentinel-gateway: {line}");
            std::process::exit(code);
        });
    }

    fn failure(&self) -> Option<db::DbError> {
        self.reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Reaches PostgreSQL (waiting up to `database.startup_wait_seconds`), migrates it, and then
/// lets the gateway answer what needs the database.
struct DatabaseStartup {
    app: Arc<App>,
    database: crate::config::DatabaseConfig,
    outcome: Arc<StartupOutcome>,
}

#[async_trait::async_trait]
impl BackgroundService for DatabaseStartup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let assertions = self.app.assertions.as_deref();
        let report = tokio::select! {
            report = connect_and_migrate(&self.database, assertions) => report,
            _ = shutdown.changed() => return,
        };
        match report {
            Ok(report) => {
                if report.adopted_existing_table {
                    tracing::info!("adopted the existing users table");
                }
                for name in &report.applied {
                    tracing::info!(migration = %name, "applied migration");
                }
                self.app.set_ready();
                tracing::info!("database ready");
            }
            Err(e) => self.outcome.fail(e),
        }
    }
}

/// Keeps the identity assertion keys loaded and complete: on every change notified, every
/// 30 s, and when the next key takes over (then the one after it is made).
struct AssertionKeys(Arc<App>);

#[async_trait::async_trait]
impl BackgroundService for AssertionKeys {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let app = &self.0;
        let Some(assertions) = app.assertions.as_deref() else {
            return;
        };
        loop {
            // Until the next key's activation (then the one after it is made), at most 30 s.
            let now = crate::credentials::token::unix_seconds(std::time::SystemTime::now());
            let wait = match (app.is_ready(), assertions.next_activation()) {
                (true, Some(at)) => (at - now).clamp(1, 30),
                (true, None) => 30,
                // Start-up loads the keys; look again soon.
                (false, _) => 1,
            };
            tokio::select! {
                _ = assertions.keys_changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(wait.unsigned_abs())) => {}
                _ = shutdown.changed() => return,
            }
            if !app.is_ready() {
                continue;
            }
            let maintained = async {
                let mut db = crate::store::users::client(&app.pool).await?;
                let client: &mut tokio_postgres::Client = &mut db;
                assertions.maintain(client).await
            };
            if let Err(e) = maintained.await {
                // The loaded keys go on signing (the next one stays published a rotation
                // period ahead); retried at the next wake-up.
                tracing::warn!(error = ?e, "could not load the identity assertion keys");
            }
        }
    }
}

/// Pingora's shutdown signals (SIGTERM, SIGINT, SIGQUIT), and a failed start-up.
struct Signals(Arc<StartupOutcome>);

#[async_trait::async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        tokio::select! {
            signal = UnixShutdownSignalWatch.recv() => signal,
            _ = self.0.failed.notified() => ShutdownSignal::FastShutdown,
        }
    }
}
