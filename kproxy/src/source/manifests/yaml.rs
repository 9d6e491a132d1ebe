//! A YAML manifest split into its documents by a YAML parser, each document read on its own:
//! one broken document is reported and skipped while the others of the file still count.
//!
//! The boundaries come from the parser's document start and end events (a `---` inside a block
//! scalar is text, `...` ends a document, comments and directives stay with their document).
//! Each document is then deserialized from its own slice of the text, so an error in it names
//! the document and not the stream. After a syntax error the parser resumes at the next
//! document marker at column 0 (`proceed_next_document`): everything before it is the broken
//! document, which fails again, with its message, when read on its own.

use serde_saphyr::{
    Options, SnippetMode,
    granit_parser::{Event, Marker, Parser, Span},
};

/// One document of a YAML stream.
#[derive(Debug)]
pub struct YamlDocument<'a> {
    /// Its place in the stream, from 1 (empty documents count).
    pub number: usize,
    /// The line where its content begins (its `---` marker's line when it has none).
    pub line: usize,
    /// Its text, from the end of the previous document to its own end: with its markers,
    /// directives and comments it parses on its own as it did in the stream.
    text: &'a str,
    /// Lines of the stream before `text`, added to the lines that errors in `text` name.
    lines_before: usize,
}

impl YamlDocument<'_> {
    /// The document as a JSON value (`Null` when empty): the Kubernetes API machinery reads
    /// YAML the same way, converted to JSON and then decoded.
    pub fn value(&self) -> Result<serde_json::Value, String> {
        serde_saphyr::from_str_with_options(self.text, options()).map_err(|e| {
            e.render_with_options(serde_saphyr::render_options! {
                // One line for the log; the lines it names are the stream's.
                snippets: SnippetMode::Off,
                line_offset: u64::try_from(self.lines_before).unwrap_or(u64::MAX),
            })
        })
    }
}

/// How kproxy reads a manifest document.
fn options() -> Options {
    serde_saphyr::options! {
        // Scalars read as serde_yaml read them before: only YAML 1.2 booleans (`yes` and `on`
        // are strings), and numbers with a leading zero or underscores (`0755`, `1_000`) stay
        // strings instead of guessing at an octal or a grouping.
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        // A large cluster's `v1 List` easily passes the default size limits (a million events,
        // 250,000 nodes); the depth limits, which keep the stack safe, stay.
        budget: serde_saphyr::budget! {
            max_events: usize::MAX,
            max_nodes: usize::MAX,
            max_total_scalar_bytes: usize::MAX,
        },
    }
}

/// The documents of `stream`, in order.
pub fn documents(stream: &str) -> Vec<YamlDocument<'_>> {
    let mut split = Split::new(stream);
    let mut parser = Parser::new_from_str(stream);
    while let Some(next) = parser.next() {
        match next {
            Ok((event, span)) => split.event(&event, span),
            Err(_) => {
                // The parser cannot go on inside this document; it resumes at the next
                // document. When it cannot (no document left, or the input failed), the rest
                // of the stream is this document.
                split.broken = true;
                if !matches!(parser.proceed_next_document(), Ok(true)) {
                    break;
                }
            }
        }
    }
    split.finish()
}

/// The documents found so far, and where the current one began.
struct Split<'a> {
    stream: &'a str,
    documents: Vec<YamlDocument<'a>>,
    /// Where the current document's text begins: where the previous one ended.
    start: Marker,
    /// The line of the current document's start event.
    start_line: Option<usize>,
    /// The line of the current document's first node.
    content_line: Option<usize>,
    /// A syntax error cut the current document short: it ends where the next one begins.
    broken: bool,
}

impl<'a> Split<'a> {
    fn new(stream: &'a str) -> Self {
        Self {
            stream,
            documents: Vec::new(),
            start: Marker::new(0, 1, 0).with_byte_offset(Some(0)),
            start_line: None,
            content_line: None,
            broken: false,
        }
    }

    fn event(&mut self, event: &Event, span: Span) {
        match event {
            Event::DocumentStart(..) => {
                if self.broken {
                    self.close(span.start);
                }
                self.start_line = Some(span.start.line());
            }
            Event::DocumentEnd => self.close(span.end),
            event if event.is_node() => {
                self.content_line.get_or_insert(span.start.line());
            }
            _ => {}
        }
    }

    /// Ends the current document at `end`; the next one begins there.
    fn close(&mut self, end: Marker) {
        // The parser's offsets are in order and on character boundaries; were they not, the
        // document would read as empty rather than stop the agent.
        let text = self
            .stream
            .get(self.byte(self.start)..self.byte(end))
            .unwrap_or_default();
        self.documents.push(YamlDocument {
            number: self.documents.len() + 1,
            line: self
                .content_line
                .or(self.start_line)
                .unwrap_or(self.start.line()),
            text,
            lines_before: self.start.line().saturating_sub(1),
        });
        self.start = end;
        self.start_line = None;
        self.content_line = None;
        self.broken = false;
    }

    fn finish(mut self) -> Vec<YamlDocument<'a>> {
        if self.broken {
            let end = Marker::new(0, 0, 0).with_byte_offset(Some(self.stream.len()));
            self.close(end);
        }
        self.documents
    }

    /// Where `marker` is in the text, in bytes (the parser of a `&str` always knows; the
    /// character index is the fallback).
    fn byte(&self, marker: Marker) -> usize {
        marker.byte_offset().unwrap_or_else(|| {
            self.stream
                .char_indices()
                .nth(marker.index())
                .map_or(self.stream.len(), |(byte, _)| byte)
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::documents;

    /// (number, line, value or error) of every document of `stream`.
    fn read(stream: &str) -> Vec<(usize, usize, Result<Value, String>)> {
        documents(stream)
            .iter()
            .map(|d| (d.number, d.line, d.value()))
            .collect()
    }

    #[test]
    fn document_boundaries_come_from_the_parser() {
        let stream = "\
# A header comment belongs to the first document.
a: 1
---
text: |
  a block scalar
  ---
  is text, marker or not
...
# Between an end marker and the next document.
---
# A document of comments only.
---
---
b: [1, 2]
...
c: after an end marker, without a start marker
--- {d: on the marker line}
";
        assert_eq!(
            read(stream),
            [
                (1, 2, Ok(json!({"a": 1}))),
                (
                    2,
                    4,
                    Ok(json!({"text": "a block scalar\n---\nis text, marker or not\n"}))
                ),
                (3, 10, Ok(Value::Null)),
                (4, 12, Ok(Value::Null)),
                (5, 14, Ok(json!({"b": [1, 2]}))),
                (
                    6,
                    16,
                    Ok(json!({"c": "after an end marker, without a start marker"}))
                ),
                (7, 17, Ok(json!({"d": "on the marker line"}))),
            ]
        );
        assert!(documents("").is_empty());
        assert!(documents("# nothing but a comment\n").is_empty());
    }

    #[test]
    fn a_syntax_error_spoils_only_its_document() {
        let stream = "\
a: 1
---
b: {unclosed: 2
c: 3
---
d: 4
";
        let docs = read(stream);
        assert_eq!(docs.len(), 3, "{docs:#?}");
        assert_eq!(docs[0], (1, 1, Ok(json!({"a": 1}))));
        assert_eq!(docs[2], (3, 6, Ok(json!({"d": 4}))));
        let (number, line, Err(e)) = &docs[1] else {
            panic!("the broken document fails: {docs:#?}");
        };
        assert_eq!((*number, *line), (2, 3));
        // `c: 3` is line 3 of the document's text (from its `---`), line 4 of the stream.
        assert!(
            e.contains("at line 4, column 2"),
            "the stream's line, not the document's: {e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn after_a_syntax_error_the_parser_resumes_at_an_end_marker_or_runs_to_the_end() {
        let stream = "a: [1\n...\nb: 2\n---\nc: d: e\n# the rest of the stream\n";
        let docs = read(stream);
        assert_eq!(docs.len(), 3, "{docs:#?}");
        assert!(matches!(docs[0], (1, 1, Err(_))), "{docs:#?}");
        assert_eq!(docs[1], (2, 3, Ok(json!({"b": 2}))));
        assert!(matches!(docs[2], (3, 5, Err(_))), "{docs:#?}");
    }

    #[test]
    fn scalars_read_as_serde_yaml_read_them() {
        assert_eq!(
            read("[yes, on, 0755, 1_000, 0x1F, true, 8080, \"8080\", ~]\n"),
            [(
                1,
                1,
                Ok(json!([
                    "yes", "on", "0755", "1_000", 31, true, 8080, "8080", null
                ]))
            )]
        );
    }
}
