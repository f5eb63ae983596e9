//! OpenAPI schemas for the wire types whose JSON form is written by hand
//! (hex digests and keys, base64 bytes, signed payloads). The pool generates
//! its API document from these and from the derived schemas of [`crate::api`].

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::{Base64Bytes, PublicKey, Sha256};

fn string(description: &str) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).description(Some(description))
}

impl PartialSchema for Sha256 {
    fn schema() -> RefOr<Schema> {
        string("SHA-256, 64 lowercase hex digits").pattern(Some("^[0-9a-f]{64}$")).into()
    }
}
impl ToSchema for Sha256 {}

impl PartialSchema for PublicKey {
    fn schema() -> RefOr<Schema> {
        string("ed25519 public key, 64 hex digits").pattern(Some("^[0-9a-fA-F]{64}$")).into()
    }
}
impl ToSchema for PublicKey {}

impl PartialSchema for Base64Bytes {
    fn schema() -> RefOr<Schema> {
        string("bytes, standard base64").content_encoding("base64").into()
    }
}
impl ToSchema for Base64Bytes {}

/// The wire form of [`crate::Signed`] for a kind of value: the exact JSON
/// text of the value and a signature over it.
fn signed_schema<T: crate::SignedKind + ToSchema>() -> RefOr<Schema> {
    let (name, kind) = (T::name(), T::KIND);
    ObjectBuilder::new()
        .description(Some(format!("A {name} signed by the pool: the signature covers the exact bytes of `payload`.")))
        .property("payload", string(&format!("The exact JSON text of the {name} that was signed.")))
        .required("payload")
        .property(
            "signature",
            string(&format!("ed25519 signature (128 hex digits) over 'idlemesh-v1\\0{kind}\\0' + payload"))
                .pattern(Some("^[0-9a-f]{128}$")),
        )
        .required("signature")
        .into()
}

/// `Signed<T>` is generic over a phantom type, so each instance on the wire
/// gets a named schema of its own.
macro_rules! signed_schemas {
    ($($name:ident => $t:ty),* $(,)?) => {$(
        #[doc = concat!("Schema of `Signed<", stringify!($t), ">`.")]
        pub struct $name;
        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                signed_schema::<$t>()
            }
        }
        impl ToSchema for $name {
            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                // The payload is text; its parsed form is documented alongside.
                schemas.push((<$t as ToSchema>::name().into_owned(), <$t as PartialSchema>::schema()));
                <$t as ToSchema>::schemas(schemas);
            }
        }
    )*};
}

signed_schemas! {
    SignedTaskManifest => crate::TaskManifest,
    SignedReceipt => crate::Receipt,
    SignedPoolChallenge => crate::api::PoolChallenge,
}

/// Bytes sent as the whole body (`application/octet-stream`).
pub struct RawBytes;

impl PartialSchema for RawBytes {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}
impl ToSchema for RawBytes {}
