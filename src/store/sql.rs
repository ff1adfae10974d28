//! Statements as plain values: SQL text with `$n` placeholders, and the arguments bound
//! to them.
//!
//! Why not sqlx's `Query` and `QueryBuilder` in the shared code: written against a generic
//! `sqlx::Database`, every statement needs a higher-ranked bound for each type it binds or
//! decodes (repeated on every impl, since a trait's where-clauses are not implied), and
//! `QueryBuilder` cannot be used generically for SQLite at all (`SqliteArguments<'q>`
//! converts only into arguments of its own lifetime). A [`Sql`] is data that names no
//! database; each dialect binds its [`Arg`]s onto a concrete sqlx query
//! (`Dialect::execute` and friends). Both backends accept `$n` placeholders in fixed
//! statements; statements built around a set of rows or keys ([`SqlBuilder`]) use the
//! dialect's own placeholders.
//!
//! Rows come back through [`Decoded`]: any type sqlx can build from a row of either
//! backend, which is what the shared `#[derive(sqlx::FromRow)]` structs and plain tuples
//! already are.
//!
//! The set-based bulk statements build their rows as [`Row`]s of [`Val`]s; each dialect
//! turns them into a relation whose statement text does not depend on the number of rows
//! (PostgreSQL: one typed array per column, see [`columns`]) or into multi-row `VALUES`
//! (SQLite, whose statements are cheap to prepare and which has no arrays).

use std::borrow::Cow;
use std::fmt::Write as _;

use uuid::Uuid;

/// One bound scalar of a relation row or a key list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Text(Option<String>),
    Int(Option<i64>),
    Uuid(Option<Uuid>),
    Bytes(Option<Vec<u8>>),
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

impl IntoVal for Vec<u8> {
    fn into_val(self) -> Val {
        Val::Bytes(Some(self))
    }
}

impl Row {
    /// Appends a value (named like [`Sql::push_bind`], so row-building code reads the same).
    pub fn push_bind(&mut self, v: impl IntoVal) -> &mut Row {
        self.0.push(v.into_val());
        self
    }
}

/// One column of a relation, for array binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Uuid(Vec<Option<Uuid>>),
    Bytes(Vec<Option<Vec<u8>>>),
}

impl Column {
    /// An empty column of `v`'s type.
    fn like(v: &Val, capacity: usize) -> Column {
        match v {
            Val::Text(_) => Column::Text(Vec::with_capacity(capacity)),
            Val::Int(_) => Column::Int(Vec::with_capacity(capacity)),
            Val::Uuid(_) => Column::Uuid(Vec::with_capacity(capacity)),
            Val::Bytes(_) => Column::Bytes(Vec::with_capacity(capacity)),
        }
    }

    /// Appends `v`; false if it is of another type.
    fn push(&mut self, v: Val) -> bool {
        match (self, v) {
            (Column::Text(c), Val::Text(v)) => c.push(v),
            (Column::Int(c), Val::Int(v)) => c.push(v),
            (Column::Uuid(c), Val::Uuid(v)) => c.push(v),
            (Column::Bytes(c), Val::Bytes(v)) => c.push(v),
            _ => return false,
        }
        true
    }

    /// A key list as one column; `None` when empty or of mixed types (a bug).
    pub fn of(keys: Vec<Val>) -> Option<Column> {
        let mut col = Column::like(keys.first()?, keys.len());
        for k in keys {
            if !col.push(k) {
                return None;
            }
        }
        Some(col)
    }
}

/// Transposes rows into columns (moving the values); the first row decides each column's
/// type (a value of another type in a later row is a bug, reported as `None`).
pub fn columns(rows: Vec<Row>) -> Option<Vec<Column>> {
    let first = rows.first()?;
    let mut cols: Vec<Column> = first
        .0
        .iter()
        .map(|v| Column::like(v, rows.len()))
        .collect();
    for row in rows {
        if row.0.len() != cols.len() {
            return None;
        }
        for (col, v) in cols.iter_mut().zip(row.0) {
            if !col.push(v) {
                return None;
            }
        }
    }
    Some(cols)
}

/// One argument of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
    Uuid(Option<Uuid>),
    Bool(bool),
    Bytes(Option<Vec<u8>>),
    /// A whole column bound as one typed array (PostgreSQL only).
    Array(Column),
}

/// What can be bound in a [`Sql`].
pub trait IntoArg {
    fn into_arg(self) -> Arg;
}

impl IntoArg for Val {
    fn into_arg(self) -> Arg {
        match self {
            Val::Text(v) => Arg::Text(v),
            Val::Int(v) => Arg::Int(v),
            Val::Uuid(v) => Arg::Uuid(v),
            Val::Bytes(v) => Arg::Bytes(v),
        }
    }
}

impl IntoArg for Column {
    fn into_arg(self) -> Arg {
        Arg::Array(self)
    }
}

impl IntoArg for &str {
    fn into_arg(self) -> Arg {
        Arg::Text(Some(self.to_owned()))
    }
}

impl IntoArg for &String {
    fn into_arg(self) -> Arg {
        Arg::Text(Some(self.clone()))
    }
}

impl IntoArg for String {
    fn into_arg(self) -> Arg {
        Arg::Text(Some(self))
    }
}

impl IntoArg for Option<&str> {
    fn into_arg(self) -> Arg {
        Arg::Text(self.map(str::to_owned))
    }
}

impl IntoArg for &Option<String> {
    fn into_arg(self) -> Arg {
        Arg::Text(self.clone())
    }
}

impl IntoArg for i64 {
    fn into_arg(self) -> Arg {
        Arg::Int(Some(self))
    }
}

impl IntoArg for Option<i64> {
    fn into_arg(self) -> Arg {
        Arg::Int(self)
    }
}

impl IntoArg for Uuid {
    fn into_arg(self) -> Arg {
        Arg::Uuid(Some(self))
    }
}

impl IntoArg for Option<Uuid> {
    fn into_arg(self) -> Arg {
        Arg::Uuid(self)
    }
}

impl IntoArg for bool {
    fn into_arg(self) -> Arg {
        Arg::Bool(self)
    }
}

impl IntoArg for &Vec<u8> {
    fn into_arg(self) -> Arg {
        Arg::Bytes(Some(self.clone()))
    }
}

/// A statement with its `$1..$n` placeholders already in the text, and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sql {
    text: Cow<'static, str>,
    args: Vec<Arg>,
}

impl Sql {
    /// A statement; fixed text (the common case) is not copied.
    pub fn new(text: impl Into<Cow<'static, str>>) -> Sql {
        Sql {
            text: text.into(),
            args: Vec::new(),
        }
    }

    /// Binds the next argument (`$1`, then `$2`, ...).
    pub fn bind(mut self, v: impl IntoArg) -> Sql {
        self.args.push(v.into_arg());
        self
    }

    /// The text and the arguments, for a dialect to bind.
    pub fn into_parts(self) -> (Cow<'static, str>, Vec<Arg>) {
        (self.text, self.args)
    }
}

/// How a built statement spells its placeholders (a dialect's choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// `$1`, `$2`, ...
    Numbered,
    /// `?`, bound in order of appearance.
    Anonymous,
}

/// A statement built piece by piece (a set of rows or keys, spelt by the dialect). Kept
/// apart from [`Sql`] so the two placeholder styles never meet in one statement: SQLite
/// binds anonymous placeholders by position, which `$n` ones would throw off.
#[derive(Debug)]
pub struct SqlBuilder {
    text: String,
    args: Vec<Arg>,
    placeholder: Placeholder,
}

impl SqlBuilder {
    pub fn new(placeholder: Placeholder, head: &str) -> SqlBuilder {
        SqlBuilder {
            text: head.to_owned(),
            args: Vec::new(),
            placeholder,
        }
    }

    /// Appends text.
    pub fn push(&mut self, text: &str) -> &mut SqlBuilder {
        self.text.push_str(text);
        self
    }

    /// Appends the next placeholder and binds `v` to it.
    pub fn push_bind(&mut self, v: impl IntoArg) -> &mut SqlBuilder {
        self.args.push(v.into_arg());
        match self.placeholder {
            // Writing to a String cannot fail.
            Placeholder::Numbered => {
                let _ = write!(self.text, "${}", self.args.len());
            }
            Placeholder::Anonymous => self.text.push('?'),
        }
        self
    }

    /// The statement.
    pub fn build(self) -> Sql {
        Sql {
            text: Cow::Owned(self.text),
            args: self.args,
        }
    }
}

/// A row type both backends can decode: every `#[derive(sqlx::FromRow)]` struct of
/// `rows.rs` and plain tuples (a scalar is a 1-tuple). The two concrete `FromRow` bounds
/// are supertraits, so they are implied wherever `R: Decoded` is: generic code needs no
/// sqlx bounds of its own. Decoded rows own their data (`'static`), so a statement's
/// future may outlive nothing but its connection.
pub trait Decoded:
    for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
    + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
    + Send
    + Unpin
    + 'static
{
}

impl<T> Decoded for T where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
        + Send
        + Unpin
        + 'static
{
}

/// Text keys as bound values.
pub fn text_keys<'k>(keys: impl IntoIterator<Item = &'k str>) -> Vec<Val> {
    keys.into_iter()
        .map(|k| Val::Text(Some(k.to_owned())))
        .collect()
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
        let cols = columns(vec![a, b.clone()]).unwrap();
        assert!(matches!(&cols[0], Column::Text(v) if v == &vec![Some("x".to_owned()), None]));
        assert!(matches!(&cols[1], Column::Int(v) if v == &vec![Some(1), None]));
        assert!(matches!(&cols[2], Column::Uuid(v) if v == &vec![Some(id), None]));
        // A row of another shape is refused, not guessed.
        let mut c = Row::default();
        c.push_bind(1i64);
        assert!(columns(vec![b, c]).is_none());
        assert!(columns(vec![]).is_none());
    }

    #[test]
    fn keys_become_one_column_of_their_type() {
        let keys = text_keys(["a", "b"]);
        assert_eq!(
            Column::of(keys),
            Some(Column::Text(vec![Some("a".into()), Some("b".into())]))
        );
        assert_eq!(Column::of(vec![]), None);
        assert_eq!(
            Column::of(vec![Val::Int(Some(1)), Val::Text(None)]),
            None,
            "mixed key types are a bug, not guessed"
        );
    }

    #[test]
    fn built_statements_number_or_list_their_placeholders_as_the_dialect_spells_them() {
        for (style, text) in [
            (
                Placeholder::Numbered,
                "SELECT x FROM t WHERE a = $1 AND b IN ($2, $3)",
            ),
            (
                Placeholder::Anonymous,
                "SELECT x FROM t WHERE a = ? AND b IN (?, ?)",
            ),
        ] {
            let mut q = SqlBuilder::new(style, "SELECT x FROM t WHERE a = ");
            q.push_bind("a")
                .push(" AND b IN (")
                .push_bind(2i64)
                .push(", ")
                .push_bind(true)
                .push(")");
            let (built, args) = q.build().into_parts();
            assert_eq!(built, text);
            assert_eq!(
                args,
                vec![
                    Arg::Text(Some("a".into())),
                    Arg::Int(Some(2)),
                    Arg::Bool(true)
                ]
            );
        }
    }
}
