//! The admin listener: health, readiness, token issuance, revocation and
//! usage totals. Never shares a listener with the proxy.

mod routes;

use crate::app::App;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

pub struct AdminApp {
    app: Arc<App>,
}

impl AdminApp {
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let reply = routes::handle(&self.app, session).await;
        let mut b = Response::builder()
            .status(reply.status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONTENT_LENGTH, reply.body.len())
            .header(http::header::CACHE_CONTROL, "no-store");
        if reply.status == 401 {
            b = b.header(http::header::WWW_AUTHENTICATE, "Bearer");
        }
        b.body(reply.body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}
