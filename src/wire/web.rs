//! The chat page's files, embedded in the binary (no CDN, works offline) and served on the
//! WebSocket port by [`super::upgrade::route`].
//!
//! The files live in `src/web/`. To serve another one, add its row to [`FILES`]: the URL path,
//! its `Content-Type`, and `include_bytes!` of the file.

/// One embedded file.
#[derive(Debug)]
pub struct File {
    /// URL path it is served at, e.g. `/` or `/app.js`.
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// Every file served.
pub const FILES: &[File] = &[
    File {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../web/index.html"),
    },
    File {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/app.js"),
    },
    File {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../web/style.css"),
    },
    // The client library, bundled for the browser from clients/js (`make clients-codegen`).
    File {
        path: "/ringpost-client.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/ringpost-client.js"),
    },
];

/// The file served at `path`.
pub fn find(path: &str) -> Option<&'static File> {
    FILES.iter().find(|f| f.path == path)
}
