fn main() {
    // Only the commands listed here exist for the webview, and each needs a
    // capability (capabilities/dashboard.json) to be callable at all.
    tauri_build::try_build(tauri_build::Attributes::new().app_manifest(tauri_build::AppManifest::new().commands(&[
        "status",
        "pause",
        "resume",
        "settings_set",
        "settings_schema",
        "ledger_entries",
        "ledger_summary",
        "ledger_verify",
        "ledger_export",
        "pools",
        "pool_join",
        "pool_leave",
        "demo_start",
        "demo_start_now",
        "app_info",
        "first_run_dismiss",
        "agent_retry",
        "settings_reset",
        "autostart_set",
    ])))
    .expect("tauri build configuration");
}
