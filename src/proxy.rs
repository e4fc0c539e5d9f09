//! The pingora glue: each `ProxyHttp` hook is a few lines that hand over to the pure modules.
//! Every request the gateway answers itself (its endpoints, preflights, 404s) is written by
//! [`write_reply`], which adds the CORS headers.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::api::{ApiError, Reply};
use crate::app::{App, OwnRequest};
use crate::cors::Cors;
use crate::routes::{classify, Endpoint, Route};

pub struct Gateway {
    app: Arc<App>,
}

impl Gateway {
    pub fn new(app: Arc<App>) -> Gateway {
        Gateway { app }
    }
}

/// Per-request state.
pub struct RequestCtx {
    started: Instant,
    endpoint: Option<Endpoint>,
}

fn header<'a>(session: &'a Session, name: &str) -> Option<&'a [u8]> {
    session.req_header().headers.get(name).map(|v| v.as_bytes())
}

/// Why a body could not be read in full.
enum BodyError {
    TooLarge,
    Io(Box<Error>),
}

/// Reads the whole body of a gateway-own request, refusing more than `limit` bytes (by the
/// declared length first, then by what actually arrives).
async fn read_body(session: &mut Session, limit: usize) -> Result<Bytes, BodyError> {
    let declared = header(session, "content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await.map_err(BodyError::Io)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Writes a gateway-own answer with CORS headers (`cors` empty for preflights, whose reply
/// carries its own).
async fn write_reply(
    session: &mut Session,
    reply: Reply,
    cors: Vec<(&'static str, String)>,
) -> Result<()> {
    let head_only = session.req_header().method == http::Method::HEAD;
    let mut resp = ResponseHeader::build(reply.status, Some(4 + reply.headers.len() + cors.len()))?;
    // Starlette's order: the endpoint's own headers, length and type, then CORS.
    for (name, value) in reply.headers {
        resp.append_header(name, value)?;
    }
    resp.insert_header("content-length", reply.body.len().to_string())?;
    resp.insert_header("content-type", reply.content_type)?;
    for (name, value) in cors {
        resp.append_header(name, value)?;
    }
    if head_only || reply.body.is_empty() {
        session.write_response_header(Box::new(resp), true).await
    } else {
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(reply.body), true).await
    }
}

impl Gateway {
    async fn answer_own(&self, session: &mut Session, endpoint: Endpoint) -> Result<Reply> {
        let body = if endpoint.reads_body() {
            match read_body(session, self.app.max_body_bytes).await {
                Ok(body) => body,
                Err(BodyError::TooLarge) => {
                    // The rest of the body is unread: this connection cannot be reused.
                    session.set_keepalive(None);
                    return Ok(ApiError::PayloadTooLarge.into_reply());
                }
                Err(BodyError::Io(e)) => {
                    // Broken framing (a bad chunk size, a body cut short): the client's fault.
                    tracing::debug!(error = %e, "cannot read request body");
                    session.set_keepalive(None);
                    return Ok(ApiError::BodyParse.into_reply());
                }
            }
        } else {
            Bytes::new()
        };
        let request = OwnRequest {
            content_type: header(session, "content-type")
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            authorization: header(session, "authorization").map(<[u8]>::to_vec),
            body,
        };
        Ok(self.app.handle(endpoint, &request).await)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            endpoint: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        session.set_keepalive(Some(self.app.keepalive_seconds));
        let method = session.req_header().method.clone();
        let origin = header(session, "origin").map(<[u8]>::to_vec);
        if Cors::is_preflight(
            &method,
            origin.as_deref(),
            header(session, "access-control-request-method"),
        ) {
            let reply = self.app.cors.preflight(
                origin.as_deref().unwrap_or_default(),
                header(session, "access-control-request-headers"),
            );
            write_reply(session, reply, Vec::new()).await?;
            return Ok(true);
        }
        let reply = match classify(&method, session.req_header().uri.path()) {
            Route::Own(endpoint) => {
                ctx.endpoint = Some(endpoint);
                self.answer_own(session, endpoint).await?
            }
            Route::MethodNotAllowed(allow) => ApiError::MethodNotAllowed { allow }.into_reply(),
            Route::NotFound => ApiError::NotFound.into_reply(),
        };
        let cors = self.app.cors.simple_headers(origin.as_deref());
        write_reply(session, reply, cors).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Every request is answered in request_filter until routes are proxied.
        Err(Error::explain(HTTPStatus(404), "no route"))
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Downstream => match e.etype() {
                    WriteError | ReadError | ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Upstream => 502,
                _ => 500,
            },
        };
        if code > 0 && session.response_written().is_none() {
            let detail = http::StatusCode::from_u16(code)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Error");
            let reply = Reply::json(code, &serde_json::json!({ "detail": detail }));
            let cors = self
                .app
                .cors
                .simple_headers(header(session, "origin").map(<[u8]>::to_vec).as_deref());
            if let Err(err) = write_reply(session, reply, cors).await {
                tracing::debug!(error = %err, "could not send error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if !self.app.access_log {
            return;
        }
        let req = session.req_header();
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        // The path only: query strings can carry secrets.
        tracing::info!(
            target: "access",
            method = %req.method,
            path = req.uri.path(),
            status,
            duration_us = ctx.started.elapsed().as_micros() as u64,
            client = session.client_addr().map(|a| a.to_string()).unwrap_or_default(),
            endpoint = ctx.endpoint.map(Endpoint::name).unwrap_or("-"),
            error = e.map(|e| e.etype().as_str()).unwrap_or(""),
        );
    }
}
