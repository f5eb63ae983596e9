//! The dashboard's WebKit, kept from loading the GL driver into this
//! process (the tray has no webview; src/gl.rs keeps GTK's GL out of both).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// With GDK's GL off, WebKit draws the dashboard without compositing: its
/// web process paints into shared memory and the window copies that with
/// cairo, so the dashboard process never touches a GPU buffer. WebKit
/// 2.50 still opens an EGL display there (loading the GL driver: 43 MiB of
/// `libLLVM` on this machine, beside the same in the web process) only to
/// find the GPU its web process would share buffers from and which of them
/// the window could import. Naming the device and turning the DMA-BUF
/// renderer off answer both without a driver (docs/benchmarks.md, issue
/// 18). Call after [`crate::gl::keep_gl_out_of_gtk`], before any other
/// thread exists.
pub fn keep_gl_out_of_webkit() {
    let gdk_gl = std::env::var("GDK_GL").ok();
    let settings = webkit_defaults(
        gdk_gl.as_deref(),
        |key| std::env::var_os(key).is_some(),
        first_render_node(Path::new("/dev/dri")),
    );
    for (key, value) in settings {
        // SAFETY: called first thing in the dashboard, before any other thread exists.
        unsafe { std::env::set_var(key, value) };
    }
}

/// What to set, given `GDK_GL`, which variables the user set already (theirs
/// win) and the machine's first DRM render node. Nothing when GDK's GL is
/// on: WebKit may composite then, and needs its EGL display.
fn webkit_defaults(
    gdk_gl: Option<&str>,
    user_set: impl Fn(&str) -> bool,
    render_node: Option<PathBuf>,
) -> Vec<(&'static str, OsString)> {
    let gl_off = gdk_gl.is_some_and(|flags| flags.split(',').any(|f| f.trim() == "disable"));
    if !gl_off {
        return Vec::new();
    }
    // With no render node, WebKit itself would have found none (a software
    // renderer); a path that is no GPU says the same, and is never opened
    // without compositing (WebKit opens it only to allocate GPU buffers).
    let device = render_node.map_or_else(|| OsString::from("/dev/null"), PathBuf::into_os_string);
    [("WEBKIT_DISABLE_DMABUF_RENDERER", OsString::from("1")), ("WEBKIT_WEB_RENDER_DEVICE_FILE", device)]
        .into_iter()
        .filter(|(key, _)| !user_set(key))
        .collect()
}

/// `renderD128` before `renderD129`: the node WebKit's own search (libdrm's
/// device list) would take first on a machine with one GPU.
fn first_render_node(dri: &Path) -> Option<PathBuf> {
    let mut nodes: Vec<PathBuf> = std::fs::read_dir(dri)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("renderD")))
        .collect();
    nodes.sort();
    nodes.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        gdk_gl: Option<&'static str>,
        user_set: &'static [&'static str],
        render_node: Option<&'static str>,
        want: &'static [&'static str],
    }

    #[test]
    fn webkit_is_told_about_the_device_only_when_gdk_gl_is_off() {
        const BOTH: &[&str] = &["WEBKIT_DISABLE_DMABUF_RENDERER=1", "WEBKIT_WEB_RENDER_DEVICE_FILE=/dev/null"];
        let node = Some("/dev/dri/renderD128");
        let cases = [
            Case {
                gdk_gl: Some("disable"),
                user_set: &[],
                render_node: node,
                want: &["WEBKIT_DISABLE_DMABUF_RENDERER=1", "WEBKIT_WEB_RENDER_DEVICE_FILE=/dev/dri/renderD128"],
            },
            Case { gdk_gl: Some("disable"), user_set: &[], render_node: None, want: BOTH },
            Case { gdk_gl: Some("gles, disable"), user_set: &[], render_node: None, want: BOTH },
            // The user's own choices stay.
            Case {
                gdk_gl: Some("disable"),
                user_set: &["WEBKIT_WEB_RENDER_DEVICE_FILE"],
                render_node: node,
                want: &["WEBKIT_DISABLE_DMABUF_RENDERER=1"],
            },
            // GDK's GL on (the user's GDK_GL): WebKit may composite and needs EGL.
            Case { gdk_gl: Some("gles"), user_set: &[], render_node: node, want: &[] },
            Case { gdk_gl: None, user_set: &[], render_node: node, want: &[] },
        ];
        for Case { gdk_gl, user_set, render_node, want } in cases {
            let got: Vec<String> =
                webkit_defaults(gdk_gl, |key| user_set.contains(&key), render_node.map(PathBuf::from))
                    .into_iter()
                    .map(|(k, v)| format!("{k}={}", v.to_string_lossy()))
                    .collect();
            assert_eq!(got, want, "GDK_GL={gdk_gl:?}, user set {user_set:?}");
        }
    }

    #[test]
    fn the_first_render_node_is_the_lowest_numbered() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(first_render_node(dir.path()), None);
        for name in ["card0", "renderD129", "renderD128", "card1"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        assert_eq!(first_render_node(dir.path()), Some(dir.path().join("renderD128")));
        assert_eq!(first_render_node(&dir.path().join("absent")), None);
    }
}
