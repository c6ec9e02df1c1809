//! The OpenAPI schemas of the shared types the API sends and reads (the `openapi` feature,
//! which only the orchestrator enables: the worker node does not compile utoipa).
//!
//! Most types derive `utoipa::ToSchema` where they are defined. This module holds the schemas
//! no single type owns: [`Money`], the exact decimal string money is written as, and the
//! id newtypes' schemas (the job, user and strategy ids share one `Id` schema, since they obey
//! one rule, [`ID_PATTERN`]).

use std::borrow::Cow;

use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::ids::{BrokerId, ID_PATTERN, JobId, NodeId, StrategyId, UserId};

/// What a money figure looks like on the `/v1` routes: [`crate::job::decimal`] writes plain
/// decimal notation, never an exponent. The seed's routes send the same figures as JSON
/// numbers; the orchestrator derives those schemas from this one.
pub const MONEY_PATTERN: &str = "^-?[0-9]+(\\.[0-9]+)?$";

/// The schema of money (`value_type = Money` on a [`rust_decimal::Decimal`] field written
/// with [`crate::job::decimal`]).
#[derive(Debug)]
pub struct Money;

impl PartialSchema for Money {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::Custom("decimal".into())))
            .pattern(Some(MONEY_PATTERN))
            .description(Some(
                "An exact decimal number written as a string, in plain notation (never an exponent).",
            ))
            .into()
    }
}

impl ToSchema for Money {}

/// One schema for every id that obeys [`ID_PATTERN`], named `Id`.
macro_rules! id_schema {
    ($($id:ty),*) => {$(
        impl PartialSchema for $id {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(128))
                    .pattern(Some(ID_PATTERN))
                    .description(Some(
                        "An identifier: 1 to 128 characters of A-Z a-z 0-9 . _ : @ -",
                    ))
                    .examples(["user-123"])
                    .into()
            }
        }

        impl ToSchema for $id {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed("Id")
            }
        }
    )*};
}

id_schema!(JobId, UserId, StrategyId);

/// The ids the API never reads, only reports: any string, under their own names.
macro_rules! plain_id_schema {
    ($($id:ty: $description:literal),*) => {$(
        impl PartialSchema for $id {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some($description))
                    .into()
            }
        }

        impl ToSchema for $id {}
    )*};
}

plain_id_schema!(
    NodeId: "A worker-node process (one per process start).",
    BrokerId: "The broker a strategy trades on."
);

/// What a text that must not be blank may not be made of only (the whitespace `str::trim`
/// removes), as a JSON Schema `pattern`: it matches any text with one other character.
pub const NOT_BLANK: &str = "[^\\u0009-\\u000D\\u0020\\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]";

/// An exchange API key or secret: 1 to 512 characters, not all blank (what
/// [`crate::validate`] checks).
pub fn credential() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(512))
        .pattern(Some(NOT_BLANK))
        .description(Some("1 to 512 characters, not all blank."))
        .into()
}

/// The start request's `brokerId`: the catalog's `Broker` enum, which the orchestrator's
/// document adds (this crate knows no catalog).
pub fn broker() -> RefOr<Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Broker"))
}

/// The start request's `config`: the catalog's `StrategyConfig`, one variant per strategy,
/// which the orchestrator's document adds.
pub fn strategy_config() -> RefOr<Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name("StrategyConfig"))
}

/// A runner event's `type`: one of [`crate::store::RunnerEvent::KINDS`].
pub fn event_kind() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(crate::store::RunnerEvent::KINDS))
        .description(Some("What happened."))
        .into()
}
