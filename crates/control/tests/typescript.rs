//! The dashboard's TypeScript types are the control API's Rust types: the
//! checked-in file must be what the Rust types generate now.

use std::path::PathBuf;

#[test]
fn typescript_is_fresh() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../ui/src/lib/control.gen.ts");
    let now = idlemesh_control::typescript();
    if std::env::var_os("IDLEMESH_UPDATE_TS").is_some() {
        std::fs::write(&path, &now).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == now,
        "{} is not what the control API's Rust types generate; run \
         `IDLEMESH_UPDATE_TS=1 cargo test -p idlemesh-control` and commit it",
        path.display()
    );
}
