//! Rows of bound values for the set-based bulk statements, independent of the backend.
//!
//! The bulk paths build their rows as [`Row`]s; each backend turns them into a relation
//! its SQL accepts with a statement text that does not depend on the number of rows:
//! PostgreSQL binds one array per column and unnests them (`SELECT * FROM UNNEST($1::text[],
//! ...)`), so each statement is parsed and planned once per connection; SQLite, whose
//! statements are cheap to prepare and which has no arrays, gets multi-row `VALUES`.

use uuid::Uuid;

/// One bound value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Text(Option<String>),
    Int(Option<i64>),
    Uuid(Option<Uuid>),
}

/// A row of values, in column order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row(pub Vec<Val>);

/// What can be bound in a [`Row`].
pub trait IntoVal {
    fn into_val(self) -> Val;
}

impl IntoVal for &str {
    fn into_val(self) -> Val {
        Val::Text(Some(self.to_owned()))
    }
}

impl IntoVal for Option<&str> {
    fn into_val(self) -> Val {
        Val::Text(self.map(str::to_owned))
    }
}

impl IntoVal for String {
    fn into_val(self) -> Val {
        Val::Text(Some(self))
    }
}

impl IntoVal for i64 {
    fn into_val(self) -> Val {
        Val::Int(Some(self))
    }
}

impl IntoVal for Option<i64> {
    fn into_val(self) -> Val {
        Val::Int(self)
    }
}

impl IntoVal for Uuid {
    fn into_val(self) -> Val {
        Val::Uuid(Some(self))
    }
}

impl IntoVal for Option<Uuid> {
    fn into_val(self) -> Val {
        Val::Uuid(self)
    }
}

impl Row {
    /// Appends a value (named like sqlx's builder, so row-building code reads the same).
    pub fn push_bind(&mut self, v: impl IntoVal) -> &mut Row {
        self.0.push(v.into_val());
        self
    }
}

/// Column-major copies of rows, for array binding.
pub enum Column {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Uuid(Vec<Option<Uuid>>),
}

/// Transposes rows into columns; the first row decides each column's type (a value of
/// another type in a later row is a bug, reported as `None`).
pub fn columns(rows: &[Row]) -> Option<Vec<Column>> {
    let first = rows.first()?;
    let mut cols: Vec<Column> = first
        .0
        .iter()
        .map(|v| match v {
            Val::Text(_) => Column::Text(Vec::with_capacity(rows.len())),
            Val::Int(_) => Column::Int(Vec::with_capacity(rows.len())),
            Val::Uuid(_) => Column::Uuid(Vec::with_capacity(rows.len())),
        })
        .collect();
    for row in rows {
        if row.0.len() != cols.len() {
            return None;
        }
        for (col, v) in cols.iter_mut().zip(&row.0) {
            match (col, v) {
                (Column::Text(c), Val::Text(v)) => c.push(v.clone()),
                (Column::Int(c), Val::Int(v)) => c.push(*v),
                (Column::Uuid(c), Val::Uuid(v)) => c.push(*v),
                _ => return None,
            }
        }
    }
    Some(cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_transpose_into_typed_columns() {
        let id = Uuid::nil();
        let mut a = Row::default();
        a.push_bind("x").push_bind(1i64).push_bind(Some(id));
        let mut b = Row::default();
        b.push_bind(None::<&str>)
            .push_bind(None::<i64>)
            .push_bind(None::<Uuid>);
        let cols = columns(&[a, b.clone()]).unwrap();
        assert!(matches!(&cols[0], Column::Text(v) if v == &vec![Some("x".to_owned()), None]));
        assert!(matches!(&cols[1], Column::Int(v) if v == &vec![Some(1), None]));
        assert!(matches!(&cols[2], Column::Uuid(v) if v == &vec![Some(id), None]));
        // A row of another shape is refused, not guessed.
        let mut c = Row::default();
        c.push_bind(1i64);
        assert!(columns(&[b, c]).is_none());
        assert!(columns(&[]).is_none());
    }
}
