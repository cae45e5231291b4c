//! `/api/*`: the proxy route's answers. A refused path costs no store read; the session, its access token
//! and the refresh it may need come from the service; the upstream call is [`crate::proxy`]'s.
//!
//! Owns the mapping of each failure to its status and code. It decides nothing about the session.

use tracing::warn;
use warp::http::StatusCode;
use warp::reply::Response;

use super::{ApiError, App, no_store};
use crate::proxy::ForwardError;
use crate::request::Req;
use crate::service::Access;

impl App {
    pub(super) async fn proxy(&self, req: &Req) -> Result<Response, ApiError> {
        if !crate::proxy::METHODS.contains(&req.method.as_str()) {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("the API takes {}", crate::proxy::METHODS.join(", ")),
            ));
        }
        // Checked before the session is: a refused path costs no store read.
        let upstream = self
            .upstream
            .as_ref()
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no_upstream", "no API upstream is configured"))?;
        let target = crate::proxy::target(upstream, &req.path, &req.query)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_api_path", e.to_string()))?;
        let admitted = self.authenticated(req).await?;
        let token = match self.service.access_token(&admitted).await?.map_err(ApiError::refusal)? {
            Access::Token(token) => token,
            Access::NoTokens => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "no_access_token",
                    "this session has no access token",
                ));
            }
            Access::Unavailable => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "provider_unavailable",
                    "the access token could not be refreshed; try again shortly",
                ));
            }
        };
        let forwarding = crate::proxy::Forwarding {
            client: req.client_ip(&self.trusted_proxies),
            proto: self.public_url.split("://").next().unwrap_or("http").to_owned(),
            host: self.public_url.split("://").nth(1).unwrap_or_default().to_owned(),
        };
        crate::proxy::forward(&self.http, req, target, &token, &forwarding, self.max_upstream_answer)
            .await
            .map(no_store)
            .map_err(|e| {
                warn!(error = %e, "upstream call failed");
                match e {
                    ForwardError::Timeout => ApiError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream_timeout",
                        "the API upstream did not answer in time",
                    ),
                    ForwardError::TooLarge { .. } => ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "upstream_too_large",
                        "the API upstream's answer is too large",
                    ),
                    ForwardError::Request(_) | ForwardError::Upstream(_) => ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "upstream_unavailable",
                        "the API upstream could not be reached",
                    ),
                }
            })
    }
}
