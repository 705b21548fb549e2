//! The dashboard's files, built into the binary: the site may have no internet, so nothing
//! comes from a CDN. Hand-written and small (about 12 KB), for phones on weak Wi-Fi.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Small enough to fetch again; an upgraded gateway never serves a stale script.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// `/`
pub async fn index() -> impl IntoResponse {
    file("text/html; charset=utf-8", INDEX)
}

/// `/app.js`
pub async fn script() -> impl IntoResponse {
    file("text/javascript; charset=utf-8", SCRIPT)
}

/// `/style.css`
pub async fn style() -> impl IntoResponse {
    file("text/css; charset=utf-8", STYLE)
}
