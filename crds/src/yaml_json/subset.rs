//! A reader for the subset of YAML that manifests are written in, giving the
//! events libyaml gives for the same text, several times faster than libyaml's
//! scanner (which was most of a 5,000-route reload).
//!
//! The subset: block mappings and sequences (indentless ones too), flow
//! collections on one line, one-line plain and quoted scalars, comments, `---`
//! between documents. On anything else (tabs, CR, block scalars, anchors,
//! tags, `?` keys, multi-line scalars or flow collections, unusual escapes,
//! and whatever libyaml would reject) it gives up with `None` and the caller
//! asks libyaml. The tests compare both event streams on random texts.

use std::borrow::Cow;

use super::Event;

/// Deeper nesting than this is left to libyaml (it keeps our recursion short).
const MAX_DEPTH: usize = 64;
/// libyaml does not look further than 1024 characters for a key's `:`.
const MAX_KEY: usize = 1000;

/// Sends the events of `text` to `emit`, ending with [`Event::StreamEnd`];
/// `None` as soon as the text leaves the subset or `emit` refuses an event.
pub(super) fn read(text: &str, emit: &mut dyn FnMut(Event<'_>) -> Option<()>) -> Option<()> {
    if !characters_in_subset(text) {
        return None;
    }
    let mut reader = Reader {
        b: text.as_bytes(),
        text,
        pos: 0,
        line: 0,
        depth: 0,
        emit,
    };
    reader.stream()
}

/// No tab, CR or other control character, and no character libyaml reads as
/// a line break or a byte-order mark.
fn characters_in_subset(text: &str) -> bool {
    let ascii_ok = |b: u8| b == b'\n' || (0x20..0x7f).contains(&b);
    if text.is_ascii() {
        return text.bytes().all(ascii_ok);
    }
    text.chars().all(|c| match c {
        '\0'..='\u{7f}' => ascii_ok(c as u8),
        '\u{2028}' | '\u{2029}' | '\u{feff}' => false,
        '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'.. => true,
        _ => false,
    })
}

struct Reader<'t, 'e> {
    text: &'t str,
    b: &'t [u8],
    pos: usize,
    /// Where the current line starts.
    line: usize,
    depth: usize,
    emit: &'e mut dyn FnMut(Event<'_>) -> Option<()>,
}

/// A scalar as read: borrowed from the text unless quoting changed it.
struct Scalar<'t> {
    value: Cow<'t, str>,
    plain: bool,
}

impl<'t> Reader<'t, '_> {
    fn stream(&mut self) -> Option<()> {
        self.skip_blank_lines();
        while !self.eof() {
            let explicit = self.at_marker(b"---");
            if explicit {
                self.pos += 3;
                self.skip_spaces();
                if !self.line_ends_here()? {
                    return None; // content after `---` on its line
                }
                self.next_line();
            } else if self.at_marker(b"...") {
                return None;
            }
            if self.eof() || self.at_marker(b"---") || self.at_marker(b"...") {
                self.scalar_event(&Scalar::null())?;
            } else {
                let col = self.column();
                self.content(col, -1, true)?;
                if !self.eof() && !self.at_marker(b"---") {
                    return None; // `...`, or text libyaml would reject
                }
            }
            (self.emit)(Event::DocumentEnd)?;
        }
        (self.emit)(Event::StreamEnd)
    }

    /// The node right after a `key:` or a `- ` (`seq_item`) of a block
    /// collection at column `parent`.
    fn value(&mut self, parent: isize, seq_item: bool) -> Option<()> {
        self.skip_spaces();
        if self.line_ends_here()? {
            self.next_line();
            if self.eof() || self.at_document_marker() {
                return self.scalar_event(&Scalar::null());
            }
            let col = self.column();
            if col as isize > parent {
                return self.content(col, parent, true);
            }
            if col as isize == parent && !seq_item && self.at_sequence_entry() {
                return self.sequence(col); // an indentless sequence
            }
            return self.scalar_event(&Scalar::null());
        }
        let col = self.column();
        // After `- ` a mapping or a sequence may start on the same line; after
        // `key: ` they may not (libyaml rejects it).
        self.content(col, parent, seq_item)
    }

    /// The node whose first character is at the read position (column `col`)
    /// inside a block collection at column `parent`; `collection`: it may be a
    /// block mapping or sequence starting here.
    fn content(&mut self, col: usize, parent: isize, collection: bool) -> Option<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let done = self.content_inner(col, parent, collection);
        self.depth -= 1;
        done
    }

    fn content_inner(&mut self, col: usize, parent: isize, collection: bool) -> Option<()> {
        if self.at_sequence_entry() {
            return if collection { self.sequence(col) } else { None };
        }
        let start = self.pos;
        match self.peek()? {
            b'[' | b'{' => {
                self.flow_node()?;
                self.skip_spaces();
                if !self.line_ends_here()? {
                    return None; // a flow collection as a key, or more text
                }
                return self.after_scalar(parent);
            }
            b'"' | b'\'' => {
                let scalar = self.quoted()?;
                self.skip_spaces();
                if self.at_key_colon() {
                    return self.mapping(col, scalar, start, collection);
                }
                if !self.line_ends_here()? {
                    return None;
                }
                self.scalar_event(&scalar)?;
                return self.after_scalar(parent);
            }
            _ => {}
        }
        let scalar = self.plain_block()?;
        if self.at_key_colon() {
            return self.mapping(col, scalar, start, collection);
        }
        if !self.line_ends_here()? {
            return None;
        }
        self.scalar_event(&scalar)?;
        self.after_scalar(parent)
    }

    /// After a one-line scalar or flow node: on to the next line, which must
    /// not continue it (a multi-line plain scalar, or an error for libyaml).
    fn after_scalar(&mut self, parent: isize) -> Option<()> {
        self.next_line();
        if !self.eof() && !self.at_document_marker() && self.column() as isize > parent {
            return None;
        }
        Some(())
    }

    /// A block mapping at column `col` whose first key has been read (it
    /// started at `key_start`); the read position is at that key's `:`.
    fn mapping(
        &mut self,
        col: usize,
        first_key: Scalar<'t>,
        key_start: usize,
        collection: bool,
    ) -> Option<()> {
        if !collection || self.pos - key_start > MAX_KEY {
            return None;
        }
        (self.emit)(Event::MappingStart)?;
        let mut key = first_key;
        loop {
            self.scalar_event(&key)?;
            self.pos += 1; // the `:`
            self.value(col as isize, false)?;
            if self.eof() || self.at_document_marker() || self.column() < col {
                break;
            }
            if self.column() > col {
                return None;
            }
            let start = self.pos;
            key = match self.peek()? {
                b'"' | b'\'' => self.quoted()?,
                _ if self.at_sequence_entry() => return None,
                _ => self.plain_block()?,
            };
            self.skip_spaces();
            if !self.at_key_colon() || self.pos - start > MAX_KEY {
                return None;
            }
        }
        (self.emit)(Event::MappingEnd)
    }

    /// A block sequence whose first `-` is at the read position (column `col`).
    fn sequence(&mut self, col: usize) -> Option<()> {
        (self.emit)(Event::SequenceStart)?;
        loop {
            self.pos += 1; // the `-`
            self.value(col as isize, true)?;
            if self.eof()
                || self.at_document_marker()
                || self.column() != col
                || !self.at_sequence_entry()
            {
                break; // the caller checks what follows
            }
        }
        (self.emit)(Event::SequenceEnd)
    }

    /// A flow collection or scalar, all on this line.
    fn flow_node(&mut self) -> Option<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let done = match self.peek()? {
            b'[' => self.flow_sequence(),
            b'{' => self.flow_mapping(),
            b'"' | b'\'' => {
                let scalar = self.quoted()?;
                self.scalar_event(&scalar)
            }
            _ => {
                let scalar = self.plain_flow()?;
                self.scalar_event(&scalar)
            }
        };
        self.depth -= 1;
        done
    }

    fn flow_sequence(&mut self) -> Option<()> {
        (self.emit)(Event::SequenceStart)?;
        self.pos += 1;
        self.skip_spaces();
        if self.peek()? != b']' {
            loop {
                self.flow_node()?;
                if self.flow_entry_end(b']')? {
                    break;
                }
            }
        }
        self.pos += 1;
        (self.emit)(Event::SequenceEnd)
    }

    fn flow_mapping(&mut self) -> Option<()> {
        (self.emit)(Event::MappingStart)?;
        self.pos += 1;
        self.skip_spaces();
        if self.peek()? != b'}' {
            loop {
                let start = self.pos;
                let key = match self.peek()? {
                    b'"' | b'\'' => self.quoted()?,
                    _ => self.plain_flow()?,
                };
                self.skip_spaces();
                if self.peek()? != b':' || self.b.get(self.pos + 1) != Some(&b' ') {
                    return None;
                }
                if self.pos - start > MAX_KEY {
                    return None;
                }
                self.scalar_event(&key)?;
                self.pos += 2;
                self.skip_spaces();
                if matches!(self.peek()?, b',' | b'}') {
                    return None; // an empty value
                }
                self.flow_node()?;
                if self.flow_entry_end(b'}')? {
                    break;
                }
            }
        }
        self.pos += 1;
        (self.emit)(Event::MappingEnd)
    }

    /// After an entry of a flow collection: `Some(true)` at its `close`,
    /// `Some(false)` past a `,` that another entry follows, `None` otherwise (a
    /// trailing comma, or `[a: b]` and the like).
    fn flow_entry_end(&mut self, close: u8) -> Option<bool> {
        self.skip_spaces();
        match self.peek()? {
            b',' => {
                self.pos += 1;
                self.skip_spaces();
                (self.peek()? != close).then_some(false)
            }
            c if c == close => Some(true),
            _ => None,
        }
    }

    /// A plain scalar in block context, up to `: `, ` #` or the line's end.
    fn plain_block(&mut self) -> Option<Scalar<'t>> {
        self.plain_start()?;
        let start = self.pos;
        let mut end = start;
        while let Some(&c) = self.b.get(self.pos) {
            match c {
                b'\n' => break,
                b':' if self.blank_at(self.pos + 1) => break,
                b'#' if self.b[self.pos - 1] == b' ' => break,
                b' ' => {}
                _ => end = self.pos + 1,
            }
            self.pos += 1;
        }
        Some(Scalar::plain(&self.text[start..end]))
    }

    /// A plain scalar in a flow collection, up to `,`, a bracket or `: `.
    fn plain_flow(&mut self) -> Option<Scalar<'t>> {
        self.plain_start()?;
        let start = self.pos;
        let mut end = start;
        loop {
            match self.peek()? {
                b',' | b'[' | b']' | b'{' | b'}' => break,
                b':' => match self.b.get(self.pos + 1) {
                    Some(b' ') => break,
                    // libyaml versions differ on `:` before these; a line break
                    // would make it multi-line.
                    None | Some(b'\n' | b',' | b'?' | b'[' | b']' | b'{' | b'}') => return None,
                    _ => end = self.pos + 1,
                },
                b'#' if self.b[self.pos - 1] == b' ' => return None,
                b'\n' => return None,
                b' ' => {}
                _ => end = self.pos + 1,
            }
            self.pos += 1;
        }
        Some(Scalar::plain(&self.text[start..end]))
    }

    /// A plain scalar may start here: not on an indicator (`-` only before
    /// something that is neither blank nor a flow indicator).
    fn plain_start(&self) -> Option<()> {
        match self.peek()? {
            b'-' => match self.b.get(self.pos + 1) {
                None | Some(b' ' | b'\n' | b',' | b'[' | b']' | b'{' | b'}') => None,
                _ => Some(()),
            },
            b'?' | b':' | b',' | b'[' | b']' | b'{' | b'}' | b'#' | b'&' | b'*' | b'!' | b'|'
            | b'>' | b'\'' | b'"' | b'%' | b'@' | b'`' | b' ' | b'\n' => None,
            _ => Some(()),
        }
    }

    /// A single- or double-quoted scalar on one line, with the common escapes.
    fn quoted(&mut self) -> Option<Scalar<'t>> {
        let quote = self.b[self.pos];
        self.pos += 1;
        let start = self.pos;
        let mut owned: Option<String> = None;
        let mut copied_to = start;
        loop {
            let c = self.peek()?;
            if c == b'\n' {
                return None; // multi-line
            }
            if c == quote {
                if quote == b'\'' && self.b.get(self.pos + 1) == Some(&b'\'') {
                    let s = owned.get_or_insert_with(String::new);
                    s.push_str(&self.text[copied_to..=self.pos]);
                    self.pos += 2;
                    copied_to = self.pos;
                    continue;
                }
                break;
            }
            if c == b'\\' && quote == b'"' {
                let s = owned.get_or_insert_with(String::new);
                s.push_str(&self.text[copied_to..self.pos]);
                let (decoded, len) = self.escape()?;
                s.push(decoded);
                self.pos += len;
                copied_to = self.pos;
                continue;
            }
            self.pos += 1;
        }
        let value = match owned {
            Some(mut s) => {
                s.push_str(&self.text[copied_to..self.pos]);
                Cow::Owned(s)
            }
            None => Cow::Borrowed(&self.text[start..self.pos]),
        };
        self.pos += 1; // the closing quote
        Some(Scalar {
            value,
            plain: false,
        })
    }

    /// The escape at the read position (a `\`): its character and length.
    fn escape(&self) -> Option<(char, usize)> {
        let hex = |digits: usize| -> Option<(char, usize)> {
            let text = self.text.get(self.pos + 2..self.pos + 2 + digits)?;
            if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let code = u32::from_str_radix(text, 16).ok()?;
            Some((char::from_u32(code)?, 2 + digits))
        };
        Some(match *self.b.get(self.pos + 1)? {
            b'\\' => ('\\', 2),
            b'"' => ('"', 2),
            b'/' => ('/', 2),
            b'n' => ('\n', 2),
            b't' => ('\t', 2),
            b'r' => ('\r', 2),
            b'0' => ('\0', 2),
            b'x' => hex(2)?,
            b'u' => hex(4)?,
            _ => return None,
        })
    }

    fn scalar_event(&mut self, scalar: &Scalar<'_>) -> Option<()> {
        (self.emit)(Event::Scalar {
            value: &scalar.value,
            plain: scalar.plain,
        })
    }

    // --- position helpers -------------------------------------------------

    fn eof(&self) -> bool {
        self.pos >= self.b.len()
    }

    /// The byte at the read position; `None` at the end of the text.
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn column(&self) -> usize {
        self.pos - self.line
    }

    fn blank_at(&self, at: usize) -> bool {
        matches!(self.b.get(at), None | Some(b' ' | b'\n'))
    }

    fn skip_spaces(&mut self) {
        while self.b.get(self.pos) == Some(&b' ') {
            self.pos += 1;
        }
    }

    /// Only a comment or nothing is left on this line. `None` for a `#`
    /// right after a token, which libyaml and YAML read differently.
    fn line_ends_here(&self) -> Option<bool> {
        match self.b.get(self.pos) {
            None | Some(b'\n') => Some(true),
            Some(b'#') if self.pos == self.line || self.b[self.pos - 1] == b' ' => Some(true),
            Some(b'#') => None,
            Some(_) => Some(false),
        }
    }

    /// To the first character of the next line that has content (past blank
    /// and comment lines), or the end of the text.
    fn next_line(&mut self) {
        match self.b[self.pos.min(self.b.len())..]
            .iter()
            .position(|&c| c == b'\n')
        {
            Some(offset) => {
                self.pos += offset + 1;
                self.line = self.pos;
                self.skip_blank_lines();
            }
            None => self.pos = self.b.len(),
        }
    }

    /// From the start of a line: past lines that are blank or only a comment.
    fn skip_blank_lines(&mut self) {
        loop {
            self.skip_spaces();
            match self.b.get(self.pos) {
                Some(b'\n') => {}
                Some(b'#') => match self.b[self.pos..].iter().position(|&c| c == b'\n') {
                    Some(offset) => self.pos += offset,
                    None => {
                        self.pos = self.b.len();
                        return;
                    }
                },
                _ => return,
            }
            self.pos += 1;
            self.line = self.pos;
        }
    }

    /// `---` or `...` at the start of a line, followed by a blank.
    fn at_marker(&self, marker: &[u8]) -> bool {
        self.pos == self.line
            && self.b[self.pos..].starts_with(marker)
            && self.blank_at(self.pos + 3)
    }

    fn at_document_marker(&self) -> bool {
        self.at_marker(b"---") || self.at_marker(b"...")
    }

    /// A block sequence entry: `-` then a blank.
    fn at_sequence_entry(&self) -> bool {
        self.peek() == Some(b'-') && self.blank_at(self.pos + 1)
    }

    /// A mapping key's `:` (followed by a blank).
    fn at_key_colon(&self) -> bool {
        self.peek() == Some(b':') && self.blank_at(self.pos + 1)
    }
}

impl<'t> Scalar<'t> {
    fn plain(value: &'t str) -> Self {
        Scalar {
            value: Cow::Borrowed(value),
            plain: true,
        }
    }

    /// The empty node libyaml reports for a missing value.
    fn null() -> Self {
        Scalar::plain("")
    }
}

#[cfg(test)]
mod tests;
