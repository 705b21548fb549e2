//! The dashboard's files, built into the binary: the site may have no internet, so nothing
//! comes from a CDN. Small (about 65 KB, 26 KB of it uPlot), for phones on weak Wi-Fi, and for
//! the head office over a satellite link: each file is gzipped once, on its first request,
//! and carries an ETag, so that a reload costs a few hundred bytes of `304 Not Modified`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// One embedded file, as it is served.
struct Asset {
    content_type: &'static str,
    body: &'static str,
    gzipped: Vec<u8>,
    etag: HeaderValue,
}

impl Asset {
    fn new(content_type: &'static str, body: &'static str) -> Self {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        // Writing to a Vec cannot fail; should it, the file goes out uncompressed.
        let gzipped = gz
            .write_all(body.as_bytes())
            .and_then(|()| gz.finish())
            .unwrap_or_default();
        // The content's hash, so that a new build's file is never taken for the old one.
        let hash = body.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let etag = HeaderValue::from_str(&format!("\"{hash:016x}\""))
            .unwrap_or(HeaderValue::from_static("\"0\""));
        Self {
            content_type,
            body,
            gzipped,
            etag,
        }
    }

    fn serve(&self, request: &HeaderMap) -> Response {
        // Revalidated on every load: an upgraded gateway never serves a stale script, and
        // an unchanged one answers with headers only.
        let common = [
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::ETAG, self.etag.clone()),
            (header::VARY, HeaderValue::from_static("accept-encoding")),
        ];
        let unchanged = request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| tag.trim() == self.etag || tag.trim() == "*");
        if unchanged {
            return (StatusCode::NOT_MODIFIED, common).into_response();
        }
        let content_type = [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        )];
        if accepts_gzip(request) && !self.gzipped.is_empty() {
            let encoding = [(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"))];
            (common, content_type, encoding, self.gzipped.clone()).into_response()
        } else {
            (common, content_type, self.body).into_response()
        }
    }
}

/// Whether the request's `Accept-Encoding` takes gzip (by name or `*`, at a quality above 0).
fn accepts_gzip(request: &HeaderMap) -> bool {
    request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// The files, by the path they are served at: the page, and uPlot 1.6.32 (MIT,
/// `dashboard/vendor/`) for its charts.
pub const FILES: [(&str, &str, &str); 5] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("dashboard/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/app.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("dashboard/style.css"),
    ),
    (
        "/uplot.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/vendor/uPlot.iife.min.js"),
    ),
    (
        "/uplot.css",
        "text/css; charset=utf-8",
        include_str!("dashboard/vendor/uPlot.min.css"),
    ),
];

static ASSETS: LazyLock<HashMap<&'static str, Asset>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|(path, content_type, body)| (*path, Asset::new(content_type, body)))
        .collect()
});

/// The embedded file at `path` (one of `FILES`), as `request` takes it.
pub fn serve(path: &str, request: &HeaderMap) -> Response {
    match ASSETS.get(path) {
        Some(asset) => asset.serve(request),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), HeaderValue::from_str(v).unwrap()))
            .collect()
    }

    async fn body(response: Response) -> Vec<u8> {
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec()
    }

    #[test]
    fn gzip_is_taken_as_browsers_and_proxies_say() {
        let accepts = |v: &str| accepts_gzip(&headers(&[(header::ACCEPT_ENCODING, v)]));
        assert!(accepts("gzip, deflate, br, zstd"));
        assert!(accepts("br;q=1.0, GZIP;q=0.5"));
        assert!(accepts("*"));
        assert!(!accepts("gzip;q=0, br"));
        assert!(!accepts("identity"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn files_go_gzipped_with_an_etag_and_revalidate_to_304() {
        let script = |request: HeaderMap| async move { serve("/app.js", &request) };
        let gzipped = script(headers(&[(header::ACCEPT_ENCODING, "gzip, br")])).await;
        assert_eq!(gzipped.status(), StatusCode::OK);
        assert_eq!(gzipped.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(gzipped.headers()[header::CACHE_CONTROL], "no-cache");
        let etag = gzipped.headers()[header::ETAG]
            .to_str()
            .unwrap()
            .to_string();
        let compressed = body(gzipped).await;
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&compressed[..])
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, include_str!("dashboard/app.js"));
        assert!(compressed.len() * 2 < plain.len(), "{}", compressed.len());

        let identity = script(HeaderMap::new()).await;
        assert!(identity.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(body(identity).await, plain.as_bytes());

        let again = script(headers(&[(header::IF_NONE_MATCH, &etag)])).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(body(again).await.is_empty());
        let other = serve("/style.css", &headers(&[(header::IF_NONE_MATCH, &etag)]));
        assert_eq!(
            other.status(),
            StatusCode::OK,
            "another file's tag is not a match"
        );
    }
}
