//! What the benchmark proxies in `examples/` share.

use pingora::server::configuration::ServerConf;
use pingora::server::Server;

/// A bootstrapped pingora server for the benchmark proxy `name`: its own pid and upgrade-socket
/// files (so that several run side by side), no shutdown grace, and `threads` worker threads.
/// `gateway_settings`: the server settings the gateway itself runs with (no work stealing,
/// tokio's timers for every timeout) instead of pingora's defaults.
pub fn server(name: &str, threads: usize, gateway_settings: bool) -> Server {
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let file = |ext: &str| {
        dir.join(format!("{name}-{pid}.{ext}"))
            .display()
            .to_string()
    };
    let defaults = ServerConf::default();
    let conf = ServerConf {
        threads,
        pid_file: file("pid"),
        upgrade_sock: file("sock"),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        work_stealing: !gateway_settings && defaults.work_stealing,
        fast_timeout_to_tokio_threshold_seconds: if gateway_settings {
            Some(0)
        } else {
            defaults.fast_timeout_to_tokio_threshold_seconds
        },
        ..defaults
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server
}
