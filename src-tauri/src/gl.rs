//! GTK 3 initialises GLX when it opens the X display, only to choose its
//! visuals, and that maps Mesa's driver (with LLVM: about 50 MiB) into a
//! tray that never draws with GL (docs/benchmarks.md). The dashboard's
//! webview draws without GDK's GL too (checked on screenshots with and
//! without WebKit's DMA-BUF renderer). A GDK_GL the user set wins.

pub fn keep_gl_out_of_gtk() {
    if std::env::var_os("GDK_GL").is_none() {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("GDK_GL", "disable") };
    }
}
