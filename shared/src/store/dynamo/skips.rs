//! Stream records an operator skipped: the publisher's only way past a record it cannot read.

use super::codec::{s, Reader};
use super::tx::classify;
use super::DynamoStore;
use crate::domain::timestamp;
use crate::publishing::events::SkippedRecords;
use crate::store::schema::{self, TableSchema};
use crate::store::StoreError;
use async_trait::async_trait;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use chrono::Utc;

impl DynamoStore {
    /// Records that `by` skips the stream record `sequence_number`, and why. The record's event
    /// is then rebuilt from the table by `operator republish`. `false` when it was skipped
    /// already (the first decision stands).
    pub async fn skip_stream_record(
        &self,
        sequence_number: &str,
        by: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(schema::PK, s(TableSchema::stream_skip_pk(sequence_number)))
            .item(schema::SK, s(TableSchema::SINGLETON_SK))
            .item(schema::TYPE_ATTRIBUTE, s("STREAM_SKIP"))
            .item("by", s(by))
            .item("reason", s(reason))
            .item("at", s(timestamp(&Utc::now())))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", schema::PK)
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(classify(e)),
        }
    }
}

#[async_trait]
impl SkippedRecords for DynamoStore {
    async fn skipped(&self, sequence_number: &str) -> Result<Option<String>, StoreError> {
        let item = self
            .get(
                TableSchema::stream_skip_pk(sequence_number),
                TableSchema::SINGLETON_SK,
            )
            .await?;
        item.map(|i| {
            let r = Reader(&i);
            Ok(format!(
                "{} at {}: {}",
                r.s("by")?,
                r.s("at")?,
                r.s("reason")?
            ))
        })
        .transpose()
    }
}
