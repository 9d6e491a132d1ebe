//! Label and field selectors as the API server reads them from `labelSelector` and
//! `fieldSelector`: comma-separated requirements that must all hold (set-based `in`/`notin`
//! label requirements are not supported).

use anyhow::{Result, bail, ensure};
use serde_json::Value;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelRequirement {
    /// `key`
    Exists(String),
    /// `!key`
    NotExists(String),
    /// `key=value` or `key==value`
    Equals(String, String),
    /// `key!=value`; like the real server, an object without the label matches.
    NotEquals(String, String),
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<LabelRequirement>);

impl LabelSelector {
    pub fn parse(text: &str) -> Result<LabelSelector> {
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim) {
            if part.is_empty() {
                continue;
            }
            let requirement = if let Some(key) = part.strip_prefix('!') {
                LabelRequirement::NotExists(label_key(key.trim())?)
            } else if let Some((key, value)) = part.split_once("!=") {
                LabelRequirement::NotEquals(label_key(key.trim())?, label_value(value.trim())?)
            } else if let Some((key, value)) =
                part.split_once("==").or_else(|| part.split_once('='))
            {
                LabelRequirement::Equals(label_key(key.trim())?, label_value(value.trim())?)
            } else {
                LabelRequirement::Exists(label_key(part)?)
            };
            requirements.push(requirement);
        }
        Ok(LabelSelector(requirements))
    }

    /// Whether the object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.0.iter().all(|requirement| match requirement {
            LabelRequirement::Exists(key) => label(key).is_some(),
            LabelRequirement::NotExists(key) => label(key).is_none(),
            LabelRequirement::Equals(key, value) => label(key) == Some(value.as_str()),
            LabelRequirement::NotEquals(key, value) => label(key) != Some(value.as_str()),
        })
    }
}

/// A label key: an optional DNS prefix and a slash, then a name of letters, digits, `-_.`.
fn label_key(key: &str) -> Result<String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
    ensure!(
        !key.is_empty() && key.chars().all(ok) && key.matches('/').count() <= 1,
        "invalid label key {key:?} (set-based requirements are not supported)"
    );
    Ok(key.to_owned())
}

fn label_value(value: &str) -> Result<String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    ensure!(value.chars().all(ok), "invalid label value {value:?}");
    Ok(value.to_owned())
}

/// One requirement of a field selector: a dotted JSON path compared with a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRequirement {
    pub path: String,
    pub value: String,
    /// `!=` rather than `=`/`==`.
    pub negated: bool,
}

/// A parsed `fieldSelector`; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<FieldRequirement>);

impl FieldSelector {
    pub fn parse(text: &str) -> Result<FieldSelector> {
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim) {
            if part.is_empty() {
                continue;
            }
            let (path, value, negated) = if let Some((path, value)) = part.split_once("!=") {
                (path, value, true)
            } else if let Some((path, value)) =
                part.split_once("==").or_else(|| part.split_once('='))
            {
                (path, value, false)
            } else {
                bail!("invalid field selector requirement {part:?}: expected path=value");
            };
            let path = path.trim();
            ensure!(
                !path.is_empty() && path.split('.').all(|segment| !segment.is_empty()),
                "invalid field path {path:?}"
            );
            requirements.push(FieldRequirement {
                path: path.to_owned(),
                value: value.trim().to_owned(),
                negated,
            });
        }
        Ok(FieldSelector(requirements))
    }

    /// Whether every requirement holds; a missing field compares as "".
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|requirement| {
            let actual = field_text(object, &requirement.path);
            (actual == requirement.value) != requirement.negated
        })
    }
}

/// The field at a dotted path as text: strings as they are, other scalars as JSON, missing
/// or null as "".
fn field_text(object: &Value, path: &str) -> String {
    let found = path
        .split('.')
        .try_fold(object, |value, segment| value.get(segment));
    match found {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}

/// Both selectors of a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn parse(label_selector: &str, field_selector: &str) -> Result<Selectors> {
        Ok(Selectors {
            labels: LabelSelector::parse(label_selector)?,
            fields: FieldSelector::parse(field_selector)?,
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}
