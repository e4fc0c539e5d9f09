//! `sentinel-gateway check-access`: what the gateway would answer a caller, worked out by the
//! same code a request goes through ([`Router::classify`], then [`Access::verdict`]), so an
//! operator can try a policy before deploying it.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::Method;

use crate::config::{Config, RouteAuth, RuleAllow, RuleConfig};
use crate::edge::routes::{Caller, Route, Router};

/// Who asks, as `check-access` describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asker {
    Anonymous,
    SignedIn {
        /// Sorted, without repeats.
        roles: Vec<String>,
        email_verified: bool,
        aal2: bool,
    },
}

/// What `check-access` found: a report to print, and whether the caller passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub report: String,
}

/// The decision for `method path` (a query is ignored, as routing ignores it) from `ip` (no
/// address: rules with `networks` do not match).
pub fn explain(
    config: &Config,
    method: &Method,
    path: &str,
    asker: &Asker,
    ip: Option<IpAddr>,
) -> Verdict {
    let router = Router::from_config(config);
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let routed = router.classify(method, path, ip);
    let mut report = String::new();
    let _ = writeln!(report, "request: {method} {path}");
    let _ = writeln!(report, "caller:  {}", describe_asker(asker, ip));
    let outcome = match routed.route {
        Route::Proxy(index) => {
            let route = &config.routes[index];
            let auth = match route.auth {
                RouteAuth::Required => "required",
                RouteAuth::Public => "public",
            };
            let _ = writeln!(report, "route:   {:?} (auth = {auth})", route.prefix);
            let _ = match routed.rule {
                Some(i) => writeln!(
                    report,
                    "rule:    {} of {}: {}",
                    i + 1,
                    route.rules.len(),
                    describe_rule(&route.rules[i])
                ),
                None if route.rules.is_empty() => writeln!(report, "rule:    none (no rules)"),
                None => writeln!(report, "rule:    none matches; the route's auth decides"),
            };
            let caller = match asker {
                Asker::Anonymous => None,
                Asker::SignedIn {
                    roles,
                    email_verified,
                    aal2,
                } => Some(Caller {
                    roles,
                    email_verified: *email_verified,
                    aal2: *aal2,
                    // A caller without a second factor of their own: only rules ask for one.
                    step_up: false,
                }),
            };
            routed.access.verdict(caller).map(|()| match caller {
                Some(_) => "forwarded, with the caller's identity",
                None => "forwarded, anonymous",
            })
        }
        Route::Own(endpoint) => {
            let _ = writeln!(
                report,
                "route:   the gateway's own endpoint ({})",
                endpoint.name()
            );
            Ok("answered by the gateway itself (the endpoint's own checks apply)")
        }
        Route::MethodNotAllowed(allow) => {
            let _ = writeln!(report, "route:   the gateway's own path (allows {allow})");
            Err(crate::own::api::ApiError::MethodNotAllowed { allow })
        }
        Route::BadPath => {
            let _ = writeln!(report, "route:   none: the path is refused as written");
            Err(crate::own::api::ApiError::BadPath)
        }
        Route::NotFound => {
            let _ = writeln!(report, "route:   none matches");
            Err(crate::own::api::ApiError::NotFound)
        }
    };
    let allowed = outcome.is_ok();
    let _ = match outcome {
        Ok(how) => writeln!(report, "outcome: allowed: {how}"),
        Err(refusal) => {
            let reply = refusal.into_reply();
            writeln!(
                report,
                "outcome: refused: {} {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            )
        }
    };
    Verdict { allowed, report }
}

fn describe_asker(asker: &Asker, ip: Option<IpAddr>) -> String {
    let from = match ip {
        Some(ip) => format!("from {ip}"),
        None => "from no address (rules with networks do not match)".to_string(),
    };
    match asker {
        Asker::Anonymous => format!("anonymous (no token), {from}"),
        Asker::SignedIn {
            roles,
            email_verified,
            aal2,
        } => format!(
            "signed in, {}, {}, roles: {}, {from}",
            if *email_verified {
                "email verified"
            } else {
                "email not verified"
            },
            if *aal2 { "aal2" } else { "aal1" },
            if roles.is_empty() {
                "none".to_string()
            } else {
                roles.join(", ")
            }
        ),
    }
}

fn describe_rule(rule: &RuleConfig) -> String {
    let mut parts = Vec::new();
    let list = |items: &[String]| items.join(", ");
    if !rule.paths.is_empty() {
        parts.push(format!("paths {}", list(&rule.paths)));
    }
    if !rule.methods.is_empty() {
        parts.push(format!("methods {}", list(&rule.methods)));
    }
    if !rule.networks.is_empty() {
        parts.push(format!("networks {}", list(&rule.networks)));
    }
    parts.push(
        match rule.allow {
            RuleAllow::Authenticated => "allow authenticated",
            RuleAllow::Public => "allow public",
            RuleAllow::Deny => "allow deny",
        }
        .to_string(),
    );
    if !rule.roles.is_empty() {
        parts.push(format!("roles any of {}", list(&rule.roles)));
    }
    if rule.verified_email {
        parts.push("verified_email".into());
    }
    if rule.mfa {
        parts.push("mfa".into());
    }
    parts.join("; ")
}
