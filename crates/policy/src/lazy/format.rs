//! The bundle's bytes: tables of fixed-width `u32` records and one pool of UTF-8 text, read in
//! place. Nothing is decoded at start and the bytes hold no pointers, so a tree of thousands of
//! files costs the broker no allocation and no relocation until a record is looked up; sorted
//! tables are searched by bisection.
//!
//! Layout: `MAGIC`, `VERSION`, then for each [`Table`] its width and row count, then every
//! table's `u32`s (little-endian) in [`Table`] order, then the pool's length and bytes.

use std::cmp::Ordering;

const MAGIC: &[u8; 8] = b"TBPOLICY";
/// Bumped whenever a table's meaning changes: a bundle is only read by the build that wrote it,
/// but a mismatch must be an error, never a misreading.
const VERSION: u32 = 1;

/// The tables, in the order they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    /// One row: mode ([`EAGER`] or [`LAZY`]), whether a delegated grant sets `token_uses`, the
    /// root policy's text.
    Meta,
    /// Every file the tree read (delegated files, session policies): path, text; by path.
    Files,
    /// The root text in pieces: start, end, newlines, [`Segment`] kind.
    Segments,
    /// Each delegate's name, in the root's order (a delegate's number is its row).
    Delegates,
    /// Delegated roles: name, delegate; by name.
    Roles,
    /// Delegated tokens: audience, delegate; by audience.
    Tokens,
    /// The root's issuers, in its order (an issuer's number is its row).
    Issuers,
    /// Exact ids delegated rules name: issuer, claim (0 `project_id`, 1 `namespace_id`), value;
    /// by issuer, claim and value.
    Ids,
    /// Delegated rules that name projects otherwise (a glob id, paths, nothing): issuer, first
    /// condition, number of conditions.
    Naming,
    /// Their conditions on ids and paths: claim, first pattern, number of patterns.
    NamingConditions,
    /// Those conditions' patterns, as written.
    NamingPatterns,
    /// Claims delegated tokens copy, each once.
    TokenClaims,
}

const TABLES: [Table; 12] = [
    Table::Meta,
    Table::Files,
    Table::Segments,
    Table::Delegates,
    Table::Roles,
    Table::Tokens,
    Table::Issuers,
    Table::Ids,
    Table::Naming,
    Table::NamingConditions,
    Table::NamingPatterns,
    Table::TokenClaims,
];

impl Table {
    /// `u32`s per row; text takes two (offset and length in the pool).
    const fn width(self) -> usize {
        match self {
            Self::Meta | Self::Files | Self::Segments | Self::Ids | Self::NamingConditions => 4,
            Self::Roles | Self::Tokens | Self::Naming => 3,
            Self::Delegates | Self::Issuers | Self::NamingPatterns | Self::TokenClaims => 2,
        }
    }
}

/// [`Table::Meta`]'s mode: the root policy is compiled whole at start (no index).
pub(crate) const EAGER: u32 = 0;
/// [`Table::Meta`]'s mode: the root's own part at start, each delegated file on first use.
pub(crate) const LAZY: u32 = 1;

/// What a piece of the root text is, so that the texts compiled at run time can be put together
/// from it with every line where it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Before the first table, and `[[issuer]]` tables: in every text.
    Shared,
    /// The root's own roles and tokens (and anything else): in the root's text only.
    Root,
    /// `[delegate.NAME]`, by the delegate's number: in that delegate's text only.
    Delegate(u32),
}

impl Segment {
    pub(crate) fn code(self) -> u32 {
        match self {
            Self::Shared => 0,
            Self::Root => 1,
            Self::Delegate(d) => 2 + d,
        }
    }

    pub(crate) fn from_code(code: u32) -> Self {
        match code {
            0 => Self::Shared,
            1 => Self::Root,
            d => Self::Delegate(d - 2),
        }
    }
}

/// Builds a bundle's bytes.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pool: Vec<u8>,
    tables: [Vec<u32>; TABLES.len()],
}

impl Writer {
    /// Puts `text` in the pool: its offset and length, for a row.
    pub(crate) fn text(&mut self, text: &str) -> [u32; 2] {
        let at = u32::try_from(self.pool.len()).expect("a bundle under 4 GiB");
        self.pool.extend_from_slice(text.as_bytes());
        [at, u32::try_from(text.len()).expect("a text under 4 GiB")]
    }

    /// Appends a row to `table`; `values` has the table's width.
    pub(crate) fn row(&mut self, table: Table, values: &[u32]) {
        assert_eq!(values.len(), table.width(), "{table:?} row");
        self.tables[table as usize].extend_from_slice(values);
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.pool.len() + 1024);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        for table in TABLES {
            let rows = self.tables[table as usize].len() / table.width();
            bytes.extend_from_slice(&u32::try_from(table.width()).unwrap().to_le_bytes());
            bytes.extend_from_slice(&u32::try_from(rows).expect("rows").to_le_bytes());
        }
        for values in &self.tables {
            values
                .iter()
                .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        }
        let pool = u32::try_from(self.pool.len()).expect("a pool under 4 GiB");
        bytes.extend_from_slice(&pool.to_le_bytes());
        bytes.extend_from_slice(&self.pool);
        bytes
    }
}

/// Where each table and the pool sit in a bundle's bytes, found once (checking magic, version
/// and lengths) so that reading a record later costs no check of the whole.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Each table's byte range, width and rows.
    tables: [(std::ops::Range<usize>, usize, usize); TABLES.len()],
    pool: std::ops::Range<usize>,
}

/// A bundle's bytes, read in place through its [`Layout`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    tables: [Rows<'a>; TABLES.len()],
    pool: &'a [u8],
}

/// One table's rows.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Rows<'a> {
    data: &'a [u8],
    width: usize,
    len: usize,
}

impl Layout {
    /// The layout of the bundle in `bytes`, or why it is not one this build reads.
    pub(crate) fn new(bytes: &[u8]) -> Result<Self, String> {
        let mut cursor = Cursor { bytes, at: 0 };
        if cursor.take(MAGIC.len())? != MAGIC {
            return Err("not a policy bundle".into());
        }
        if cursor.word()? != VERSION as usize {
            return Err("a policy bundle of another version".into());
        }
        let mut shapes = [(0, 0); TABLES.len()];
        for (table, shape) in TABLES.iter().zip(&mut shapes) {
            *shape = (cursor.word()?, cursor.word()?);
            if shape.0 != table.width() {
                return Err(format!("table {table:?} has the wrong width"));
            }
        }
        let mut tables: [(std::ops::Range<usize>, usize, usize); TABLES.len()] = Default::default();
        for (table, (width, len)) in tables.iter_mut().zip(shapes) {
            let size = width
                .checked_mul(len)
                .and_then(|n| n.checked_mul(4))
                .ok_or("too long")?;
            let start = cursor.at;
            cursor.take(size)?;
            *table = (start..cursor.at, width, len);
        }
        let pool_len = cursor.word()?;
        let start = cursor.at;
        cursor.take(pool_len)?;
        if cursor.at != bytes.len() {
            return Err("bytes after the bundle's end".into());
        }
        Ok(Self {
            tables,
            pool: start..cursor.at,
        })
    }

    /// `bytes` (the ones this layout was found in) read through it.
    pub(crate) fn reader<'a>(&self, bytes: &'a [u8]) -> Reader<'a> {
        let mut tables = [Rows::default(); TABLES.len()];
        for (rows, (range, width, len)) in tables.iter_mut().zip(&self.tables) {
            *rows = match bytes.get(range.clone()) {
                Some(data) => Rows {
                    data,
                    width: *width,
                    len: *len,
                },
                None => Rows::default(),
            };
        }
        Reader {
            tables,
            pool: bytes.get(self.pool.clone()).unwrap_or_default(),
        }
    }
}

impl<'a> Reader<'a> {
    pub(crate) fn rows(&self, table: Table) -> Rows<'a> {
        self.tables[table as usize]
    }

    /// The pool's text at `at`, `len` bytes: `None` when out of bounds or not UTF-8.
    pub(crate) fn text(&self, at: u32, len: u32) -> Option<&'a str> {
        std::str::from_utf8(self.bytes(at, len)?).ok()
    }

    /// The pool's bytes at `at`, `len` bytes (for comparing without checking UTF-8).
    pub(crate) fn bytes(&self, at: u32, len: u32) -> Option<&'a [u8]> {
        let start = at as usize;
        self.pool.get(start..start.checked_add(len as usize)?)
    }

    /// The text of columns `col` and `col + 1` of `row`.
    pub(crate) fn text_at(&self, table: Table, row: usize, col: usize) -> Option<&'a str> {
        let rows = self.rows(table);
        self.text(rows.get(row, col)?, rows.get(row, col + 1)?)
    }

    /// The row of a table sorted by `key` whose key compares equal, by bisection.
    pub(crate) fn find(&self, table: Table, key: impl Fn(usize) -> Ordering) -> Option<usize> {
        let (mut low, mut high) = (0, self.rows(table).len());
        while low < high {
            let middle = low + (high - low) / 2;
            match key(middle) {
                Ordering::Less => low = middle + 1,
                Ordering::Greater => high = middle,
                Ordering::Equal => return Some(middle),
            }
        }
        None
    }

    /// Compares the text in columns `col`, `col + 1` of `row` with `wanted` (bytes, as sorted).
    pub(crate) fn compare(&self, table: Table, row: usize, col: usize, wanted: &str) -> Ordering {
        let rows = self.rows(table);
        let here = rows
            .get(row, col)
            .zip(rows.get(row, col + 1))
            .and_then(|(at, len)| self.bytes(at, len));
        // A damaged row sorts first: a search passes it and finds nothing, which denies.
        here.map_or(Ordering::Less, |here| here.cmp(wanted.as_bytes()))
    }
}

/// Reading a bundle from the front.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).ok_or("too long")?;
        let piece = self
            .bytes
            .get(self.at..end)
            .ok_or("the bundle is cut short")?;
        self.at = end;
        Ok(piece)
    }

    fn word(&mut self) -> Result<usize, String> {
        let bytes = self.take(4)?.try_into().expect("4 bytes");
        Ok(u32::from_le_bytes(bytes) as usize)
    }
}

impl Rows<'_> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Column `col` of row `row`, `None` outside the table.
    pub(crate) fn get(&self, row: usize, col: usize) -> Option<u32> {
        if row >= self.len || col >= self.width {
            return None;
        }
        let at = (row * self.width + col) * 4;
        let bytes = self.data.get(at..at + 4)?;
        Some(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_reads_back_what_was_written_and_finds_sorted_rows() {
        let mut writer = Writer::default();
        for (name, delegate) in [("alpha", 0), ("beta", 1), ("gamma", 1)] {
            let [at, len] = writer.text(name);
            writer.row(Table::Roles, &[at, len, delegate]);
        }
        writer.row(Table::Meta, &[LAZY, 1, 0, 0]);
        let bytes = writer.finish();
        let layout = Layout::new(&bytes).unwrap();
        let reader = layout.reader(&bytes);
        assert_eq!(reader.rows(Table::Roles).len(), 3);
        assert_eq!(reader.rows(Table::Meta).get(0, 0), Some(LAZY));
        for (name, found) in [
            ("alpha", Some(0)),
            ("gamma", Some(2)),
            ("delta", None),
            ("", None),
        ] {
            let row = reader.find(Table::Roles, |row| {
                reader.compare(Table::Roles, row, 0, name)
            });
            assert_eq!(row, found, "{name}");
        }
        assert_eq!(reader.text_at(Table::Roles, 1, 0), Some("beta"));
        assert_eq!(reader.rows(Table::Roles).get(3, 0), None);
        assert_eq!(reader.rows(Table::Roles).get(0, 3), None);
    }

    #[test]
    fn a_damaged_bundle_is_refused_not_misread() {
        let mut writer = Writer::default();
        writer.row(Table::Meta, &[LAZY, 0, 0, 0]);
        let bytes = writer.finish();
        assert!(Layout::new(&bytes).is_ok());
        assert!(Layout::new(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Layout::new(&longer).is_err());
        let mut other_version = bytes.clone();
        other_version[8] = 2;
        assert!(Layout::new(&other_version).is_err());
        assert!(Layout::new(b"TBPOLICX").is_err());
    }
}
