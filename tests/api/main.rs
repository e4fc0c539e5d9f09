//! Integration tests: the real `sentinel-gateway` binary, a real PostgreSQL, HTTP over sockets.

mod cluster;
mod helpers;
mod mailbox;

mod account_mail;
mod admin_api;
mod admin_cli;
mod adoption;
mod assertions;
mod attacks;
mod audit;
mod browser;
mod cors;
mod db_outage;
mod docs;
mod flood;
mod goldens;
mod h2_limits;
mod hostile_input;
mod login;
mod me;
mod metrics;
mod packaging;
mod pg_tls;
mod proxy;
mod proxy_streams;
mod rate_limits;
mod register;
mod roles;
mod route_rules;
mod sessions;
mod shared_limits;
mod slow_clients;
mod startup;
mod tls;
mod upgrade;
