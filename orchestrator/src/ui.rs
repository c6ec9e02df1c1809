//! The dashboard at `/ui`: one page of plain HTML, CSS and an ES module, embedded in the binary
//! (no Node.js, no bundler, nothing to fetch at run time). It talks only to the HTTP API, with
//! the key the person enters, kept in the tab's `sessionStorage` and sent in the
//! `Authorization` header (never in a URL); the live updates read `/v1/events` with `fetch`,
//! because the browser's `EventSource` cannot send that header.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// One embedded file: its bytes and content type.
struct Asset {
    body: &'static str,
    content_type: &'static str,
}

const INDEX: Asset = Asset {
    body: include_str!("../ui/index.html"),
    content_type: "text/html; charset=utf-8",
};
const SCRIPT: Asset = Asset {
    body: include_str!("../ui/app.js"),
    content_type: "text/javascript; charset=utf-8",
};
const STYLE: Asset = Asset {
    body: include_str!("../ui/app.css"),
    content_type: "text/css; charset=utf-8",
};

/// The page's content security policy: its own files and the API only; no inline script, no
/// framing, no other origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes.
pub fn routes<St: Clone + Send + Sync + 'static>() -> Router<St> {
    Router::new()
        .route("/ui", get(|| async { serve(&INDEX) }))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/app.js", get(|| async { serve(&SCRIPT) }))
        .route("/ui/app.css", get(|| async { serve(&STYLE) }))
}

fn serve(asset: &Asset) -> Response {
    let mut response = (StatusCode::OK, asset.body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // The files change only with the binary; `no-cache` makes a browser check after an upgrade.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn the_page_and_its_files_are_served_with_their_types_and_policy() {
        for (path, kind) in [
            ("/ui", "text/html"),
            ("/ui/app.js", "text/javascript"),
            ("/ui/app.css", "text/css"),
        ] {
            let res = routes::<()>()
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{path}");
            let h = res.headers();
            assert!(h[header::CONTENT_TYPE].to_str().unwrap().starts_with(kind));
            assert!(
                h[header::CONTENT_SECURITY_POLICY]
                    .to_str()
                    .unwrap()
                    .contains("script-src 'self'")
            );
        }
    }

    #[test]
    fn the_page_loads_only_its_own_files_and_no_inline_script() {
        let html = INDEX.body;
        assert!(html.contains(r#"src="/ui/app.js""#));
        assert!(html.contains(r#"href="/ui/app.css""#));
        // The policy forbids inline script: the page must hold none.
        assert!(!html.contains("<script>") && !html.contains("onclick="));
    }
}
