//! Typed access to the named columns of a change batch or its before-image.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StructArray};
use arrow::datatypes::DataType;

use crate::error::{Result, TransformError};

/// The columns of a change batch (or of its `_before` struct), by name.
pub struct Columns<'a> {
    table: &'a str,
    names: Vec<&'a str>,
    arrays: Vec<&'a ArrayRef>,
}

impl<'a> Columns<'a> {
    /// The row columns of `batch`.
    pub fn of_batch(table: &'a str, batch: &'a RecordBatch) -> Self {
        let schema = batch.schema_ref();
        Self {
            table,
            names: schema.fields().iter().map(|f| f.name().as_str()).collect(),
            arrays: batch.columns().iter().collect(),
        }
    }

    /// The before-image columns, when the batch has them.
    pub fn of_before(table: &'a str, before: &'a StructArray) -> Self {
        Self {
            table,
            names: before.fields().iter().map(|f| f.name().as_str()).collect(),
            arrays: before.columns().iter().collect(),
        }
    }

    fn array(&self, name: &str) -> Result<&'a ArrayRef> {
        self.names
            .iter()
            .position(|n| *n == name)
            .map(|i| self.arrays[i])
            .ok_or_else(|| {
                TransformError::State(format!("changes of {} have no column {name}", self.table))
            })
    }

    fn typed(&self, name: &str, want: &DataType) -> Result<&'a ArrayRef> {
        let a = self.array(name)?;
        if !matches!(
            (a.data_type(), want),
            (DataType::List(_), DataType::List(_))
        ) && a.data_type() != want
        {
            return Err(TransformError::State(format!(
                "column {name} of {} is {}, expected {want}",
                self.table,
                a.data_type()
            )));
        }
        Ok(a)
    }

    /// A uuid column.
    pub fn uuid(&self, name: &str) -> Result<UuidColumn<'a>> {
        let a = self.typed(name, &DataType::FixedSizeBinary(16))?;
        Ok(UuidColumn(a.as_fixed_size_binary()))
    }

    /// A text column.
    pub fn text(&self, name: &str) -> Result<TextColumn<'a>> {
        let a = self.typed(name, &DataType::Utf8)?;
        Ok(TextColumn(a.as_string::<i32>()))
    }

    /// A boolean column.
    pub fn boolean(&self, name: &str) -> Result<BoolColumn<'a>> {
        let a = self.typed(name, &DataType::Boolean)?;
        Ok(BoolColumn(a.as_boolean()))
    }

    /// A timestamptz column, as microseconds since the Unix epoch.
    pub fn timestamp(&self, name: &str) -> Result<TimestampColumn<'a>> {
        let a = self.array(name)?;
        a.as_primitive_opt::<arrow::datatypes::TimestampMicrosecondType>()
            .map(TimestampColumn)
            .ok_or_else(|| {
                TransformError::State(format!(
                    "column {name} of {} is {}, expected a timestamp",
                    self.table,
                    a.data_type()
                ))
            })
    }

    /// Whether the change at `i` left `name` out because its large value did
    /// not change (the row then holds NULL, which is not the value).
    pub fn unchanged_toast(&self, i: usize, name: &str) -> bool {
        let Ok(list) = self.array(lily_cdc::batch::UNCHANGED_TOAST) else {
            return false;
        };
        let Some(list) = list.as_list_opt::<i32>() else {
            return false;
        };
        if list.is_null(i) {
            return false;
        }
        let values = list.value(i);
        values
            .as_string_opt::<i32>()
            .is_some_and(|v| v.iter().flatten().any(|c| c == name))
    }

    /// A text[] column.
    pub fn text_list(&self, name: &str) -> Result<TextListColumn<'a>> {
        let a = self.typed(
            name,
            &DataType::List(arrow::datatypes::Field::new("item", DataType::Utf8, true).into()),
        )?;
        Ok(TextListColumn(a.as_list::<i32>()))
    }
}

/// A uuid column as 128-bit integers.
pub struct UuidColumn<'a>(&'a arrow::array::FixedSizeBinaryArray);

impl UuidColumn<'_> {
    /// The value at `i`.
    pub fn get(&self, i: usize) -> Option<u128> {
        if self.0.is_null(i) {
            return None;
        }
        let bytes: [u8; 16] = self.0.value(i).try_into().ok()?;
        Some(u128::from_be_bytes(bytes))
    }
}

/// A text column.
pub struct TextColumn<'a>(&'a arrow::array::StringArray);

impl<'a> TextColumn<'a> {
    /// The value at `i`.
    pub fn get(&self, i: usize) -> Option<&'a str> {
        (!self.0.is_null(i)).then(|| self.0.value(i))
    }
}

/// A timestamp column in microseconds.
pub struct TimestampColumn<'a>(&'a arrow::array::TimestampMicrosecondArray);

impl TimestampColumn<'_> {
    /// The value at `i`.
    pub fn get(&self, i: usize) -> Option<i64> {
        (!self.0.is_null(i)).then(|| self.0.value(i))
    }
}

/// A boolean column.
pub struct BoolColumn<'a>(&'a arrow::array::BooleanArray);

impl BoolColumn<'_> {
    /// The value at `i`.
    pub fn get(&self, i: usize) -> Option<bool> {
        (!self.0.is_null(i)).then(|| self.0.value(i))
    }
}

/// A text[] column.
pub struct TextListColumn<'a>(&'a arrow::array::ListArray);

impl TextListColumn<'_> {
    /// The values at `i` (empty when NULL).
    pub fn get(&self, i: usize) -> Vec<String> {
        if self.0.is_null(i) {
            return Vec::new();
        }
        let values = self.0.value(i);
        let Some(values) = values.as_string_opt::<i32>() else {
            return Vec::new();
        };
        values.iter().flatten().map(str::to_owned).collect()
    }
}
