//! The end-to-end tests, one crate: each module covers one area and runs
//! the real `tollgate` binary (and, where it matters, real Redis servers and
//! real clients) against the fake provider of `common/`.

mod common;

mod admin;
mod auth;
mod budget_two_replicas;
mod cache;
mod cli;
mod cloud;
mod concurrency_release;
mod crash;
mod deploy_gate;
mod endpoints;
mod errors;
mod guard;
mod hostile_requests;
mod identity_sources;
mod key_permissions;
mod leases;
mod ledger;
mod lifecycle;
mod limits;
mod limits_both_stores;
mod metrics;
mod models;
mod parsers_smoke;
mod provider_faults;
mod proxy_basic;
mod real_clients;
mod real_clients_tls;
mod redis_store;
mod report;
mod secrets;
mod shield;
mod store_faults;
mod store_outage;
mod store_unreachable;
mod streaming;
mod teams;
mod telemetry;
mod tls;
mod usage_records;
