//! The dashboard's TypeScript types are the control API's Rust types: the
//! checked-in file must be what the Rust types generate now.

use std::path::PathBuf;

#[test]
fn typescript_is_fresh() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../ui/src/lib/control.gen.ts");
    let now = idlemesh_control::typescript();
    assert!(
        idlemesh_control::generated_file_is_fresh(&path, &now).unwrap(),
        "{} is not what the control API's Rust types generate; run \
         `IDLEMESH_UPDATE_TS=1 cargo test -p idlemesh-control` and commit it",
        path.display()
    );
}
