//! Output like kubectl's: borderless tables with upper-case headers, ages such as `5m12s`,
//! and `-o json|yaml|name|wide|jsonpath=...|custom-columns=...`.

use comfy_table::{ContentArrangement, Table, presets::NOTHING};
use serde::Serialize;
use serde_json::Value;

use super::jsonpath::{Template, value_text};

/// `-o`: kubectl's output formats.
#[derive(Clone, Debug, PartialEq)]
pub enum OutputFormat {
    Table,
    Wide,
    Json,
    Yaml,
    Name,
    /// `jsonpath=TEMPLATE` (or `jsonpath-file=PATH`).
    JsonPath(Template),
    /// `custom-columns=HEADER:PATH,...` (or `custom-columns-file=PATH`).
    CustomColumns(Vec<(String, Template)>),
}

/// The values `-o` accepts, for help and completion.
pub const OUTPUT_FORMATS: [&str; 9] = [
    "json",
    "yaml",
    "name",
    "wide",
    "table",
    "jsonpath=",
    "jsonpath-file=",
    "custom-columns=",
    "custom-columns-file=",
];

impl std::str::FromStr for OutputFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (kind, argument) = match text.split_once('=') {
            Some((kind, argument)) => (kind, Some(argument)),
            None => (text, None),
        };
        let read = |path: &str| {
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
        };
        match (kind, argument) {
            ("table", None) => Ok(Self::Table),
            ("wide", None) => Ok(Self::Wide),
            ("json", None) => Ok(Self::Json),
            ("yaml", None) => Ok(Self::Yaml),
            ("name", None) => Ok(Self::Name),
            ("jsonpath", Some(template)) => Ok(Self::JsonPath(Template::parse(template)?)),
            ("jsonpath-file", Some(path)) => {
                Ok(Self::JsonPath(Template::parse(read(path)?.trim_end())?))
            }
            ("custom-columns", Some(spec)) => Ok(Self::CustomColumns(parse_columns(spec)?)),
            ("custom-columns-file", Some(path)) => {
                Ok(Self::CustomColumns(parse_columns_file(&read(path)?)?))
            }
            ("jsonpath" | "jsonpath-file" | "custom-columns" | "custom-columns-file", None) => {
                Err(format!("{kind} needs a value: -o {kind}=..."))
            }
            _ => Err(format!(
                "unknown output format {text:?}: use one of {}",
                OUTPUT_FORMATS.join(", ")
            )),
        }
    }
}

/// `NAME:.metadata.name,BUSY:.status.busyCount`.
fn parse_columns(spec: &str) -> Result<Vec<(String, Template)>, String> {
    let columns = spec
        .split(',')
        .map(|column| {
            let (header, path) = column.split_once(':').ok_or_else(|| {
                format!("custom column {column:?} is not HEADER:PATH (e.g. NAME:.metadata.name)")
            })?;
            let path = path.trim();
            let path = if path.starts_with('{') {
                path.to_string()
            } else {
                format!("{{{path}}}")
            };
            Ok((header.to_string(), Template::parse(&path)?))
        })
        .collect::<Result<Vec<_>, String>>()?;
    if columns.is_empty() {
        return Err("custom-columns needs at least one HEADER:PATH".into());
    }
    Ok(columns)
}

/// kubectl's custom-columns file: a line of headers, a line of paths.
fn parse_columns_file(text: &str) -> Result<Vec<(String, Template)>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let (Some(headers), Some(paths)) = (lines.next(), lines.next()) else {
        return Err("a custom-columns file has two lines: headers, then paths".into());
    };
    let headers: Vec<&str> = headers.split_whitespace().collect();
    let paths: Vec<&str> = paths.split_whitespace().collect();
    if headers.len() != paths.len() {
        return Err(format!(
            "{} headers but {} paths in the custom-columns file",
            headers.len(),
            paths.len()
        ));
    }
    parse_columns(
        &headers
            .iter()
            .zip(&paths)
            .map(|(h, p)| format!("{h}:{p}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// Prints `value` (an object, or a `List` with `items`) in one of the formats that need no
/// knowledge of the command: json, yaml, jsonpath, custom-columns; `name` with `kind_name`
/// (`hotstandbydeployment.apps.paia.tech`). Returns false for table and wide, which are the
/// command's own.
pub fn print_generic(format: &OutputFormat, value: &Value, kind_name: &str) -> crate::Result<bool> {
    match format {
        OutputFormat::Json => print!("{}", to_json(value)),
        OutputFormat::Yaml => print!("{}", to_yaml(value)),
        OutputFormat::Name => {
            for item in items_of(value) {
                let name = item["metadata"]["name"].as_str().unwrap_or_default();
                println!("{kind_name}/{name}");
            }
        }
        OutputFormat::JsonPath(template) => {
            let text = template
                .render(value)
                .map_err(|e| crate::Error::Invalid(format!("error executing jsonpath: {e}")))?;
            // Like kubectl: the template decides about newlines.
            print!("{text}");
        }
        OutputFormat::CustomColumns(columns) => print!("{}", custom_columns(columns, value)?),
        OutputFormat::Table | OutputFormat::Wide => return Ok(false),
    }
    Ok(true)
}

/// The objects of a list (a `List`, or a report with `items`), or the object itself.
pub fn items_of(value: &Value) -> Vec<&Value> {
    match value.get("items").and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![value],
    }
}

/// A table with one row per object: each cell the column's values joined by `,`, `<none>` when
/// there are none (as kubectl prints custom columns).
pub fn custom_columns(columns: &[(String, Template)], value: &Value) -> crate::Result<String> {
    let headers: Vec<&str> = columns.iter().map(|(h, _)| h.as_str()).collect();
    let mut rows = Vec::new();
    for item in items_of(value) {
        let mut row = Vec::new();
        for (_, template) in columns {
            let values = template
                .values(item)
                .map_err(|e| crate::Error::Invalid(format!("custom-columns: {e}")))?;
            let texts: Vec<String> = values
                .into_iter()
                .filter(|v| !v.is_null())
                .map(value_text)
                .collect();
            row.push(if texts.is_empty() {
                "<none>".to_string()
            } else {
                texts.join(",")
            });
        }
        rows.push(row);
    }
    Ok(table(&headers, rows))
}

/// A kubectl-style table: columns separated by three spaces, no borders, no trailing blanks.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    table_with_gap(headers, rows, 3)
}

/// A `kubectl describe` section table: indented by two, two-space gaps, a row of dashes under
/// the headers (`Type  Reason  Age  From  Message` / `----  ------ ...`).
pub fn describe_table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let dashes: Vec<String> = headers.iter().map(|h| "-".repeat(h.len())).collect();
    let mut all = vec![dashes];
    all.extend(rows);
    table_with_gap(headers, all, 2)
        .lines()
        .map(|line| format!("  {line}\n"))
        .collect()
}

fn table_with_gap(headers: &[&str], rows: Vec<Vec<String>>, gap: u16) -> String {
    let mut table = Table::new();
    table
        .load_style(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, gap));
    }
    let mut text = String::new();
    for line in table.lines() {
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

pub fn to_json<T: Serialize>(value: &T) -> String {
    let mut text =
        serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

pub fn to_yaml<T: Serialize>(value: &T) -> String {
    serde_saphyr::to_string(value).unwrap_or_else(|e| format!("# cannot render YAML: {e}\n"))
}

/// kubectl's human-readable duration (`k8s.io/apimachinery/pkg/util/duration.HumanDuration`).
pub fn human_age(seconds: i64) -> String {
    if seconds < 0 {
        return "<invalid>".into();
    }
    let minutes = seconds / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    if seconds < 60 * 2 {
        format!("{seconds}s")
    } else if minutes < 10 {
        let s = seconds % 60;
        if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        }
    } else if minutes < 60 * 3 {
        format!("{minutes}m")
    } else if hours < 8 {
        let m = minutes % 60;
        if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        }
    } else if hours < 24 * 365 * 2 {
        format!("{days}d")
    } else if hours < 24 * 365 * 8 {
        let y = days / 365;
        let d = days % 365;
        if d == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{d}d")
        }
    } else {
        format!("{}y", days / 365)
    }
}

/// The age of an object created at `created`, as kubectl shows it.
pub fn age_since(created: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    match created {
        Some(time) => human_age(jiff::Timestamp::now().duration_since(time.0).as_secs()),
        None => "<unknown>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        for (seconds, expected) in [
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (10 * 3600, "10h"),
            (3 * 86400 + 3600, "3d1h"),
            (30 * 86400, "30d"),
            (-1, "<invalid>"),
        ] {
            assert_eq!(human_age(seconds), expected, "{seconds}s");
        }
    }

    #[test]
    fn output_formats_parse_like_kubectl() {
        for (text, ok) in [
            ("json", true),
            ("yaml", true),
            ("name", true),
            ("wide", true),
            ("jsonpath={.items[*].metadata.name}", true),
            (
                "custom-columns=NAME:.metadata.name,BUSY:.status.busyCount",
                true,
            ),
            ("jsonpath", false),
            ("custom-columns=NAME", false),
            ("go-template={{.x}}", false),
            ("xml", false),
        ] {
            assert_eq!(text.parse::<OutputFormat>().is_ok(), ok, "{text}");
        }
    }

    #[test]
    fn custom_columns_print_none_for_missing_values() {
        let OutputFormat::CustomColumns(columns) =
            "custom-columns=NAME:.metadata.name,MAX:.spec.maxReplicas,READY:.status.conditions[?(@.type==\"Ready\")].status"
                .parse()
                .unwrap()
        else {
            panic!("custom columns")
        };
        let list = serde_json::json!({"kind": "List", "items": [
            {"metadata": {"name": "a"}, "spec": {"maxReplicas": 5}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
            {"metadata": {"name": "b"}, "spec": {}},
        ]});
        assert_eq!(
            custom_columns(&columns, &list).unwrap(),
            "NAME   MAX      READY\na      5        True\nb      <none>   <none>\n"
        );
    }

    #[test]
    fn tables_have_no_borders_and_three_space_gaps() {
        let text = table(&["NAME", "BUSY"], vec![vec!["game-ws".into(), "2".into()]]);
        assert_eq!(text, "NAME      BUSY\ngame-ws   2\n");
    }
}
