//! kubectl's JSONPath templates (`-o jsonpath=...`, `-o custom-columns=...`): text with `{...}`
//! expressions, `{range ...}...{end}` and string literals such as `{"\n"}`. Each expression is
//! translated to RFC 9535 JSONPath and evaluated by `jsonpath-rust` (the crate kube itself uses
//! for kubeconfig paths). kubectl's own syntax that RFC 9535 lacks is translated: a path
//! relative to the current object (`.items[*]`), member names with `-` or `/`
//! (`.metadata.labels.app-name`) and escaped dots (`app\.kubernetes\.io/name`).
//!
//! As in kubectl: several results are separated by a space, strings print raw and objects as
//! JSON, and a missing key prints nothing (`--allow-missing-template-keys`, kubectl's default).

use jsonpath_rust::JsonPath;
use serde_json::Value;

/// One piece of a template.
#[derive(Clone, Debug, PartialEq)]
enum Node {
    Text(String),
    /// An RFC 9535 path, relative to the current object.
    Path(String),
    Range(String, Vec<Node>),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    nodes: Vec<Node>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        let tokens = tokenize(text)?;
        let mut position = 0;
        let nodes = parse_nodes(&tokens, &mut position, false)?;
        Ok(Self { nodes })
    }

    /// The template applied to `value`.
    pub fn render(&self, value: &Value) -> Result<String, String> {
        let mut out = String::new();
        render_nodes(&self.nodes, value, &mut out)?;
        Ok(out)
    }

    /// The values the template's single expression selects (for custom columns).
    pub fn values<'a>(&self, value: &'a Value) -> Result<Vec<&'a Value>, String> {
        match self.nodes.as_slice() {
            [Node::Path(path)] => query(value, path),
            _ => Err("a column takes one path, such as .metadata.name".into()),
        }
    }
}

#[derive(Debug)]
enum Token {
    Text(String),
    Action(String),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        match rest.find('{') {
            None => {
                tokens.push(Token::Text(rest.to_string()));
                break;
            }
            Some(start) => {
                if start > 0 {
                    tokens.push(Token::Text(rest[..start].to_string()));
                }
                let end = closing_brace(&rest[start..])
                    .ok_or_else(|| format!("unclosed action in {text:?}"))?;
                tokens.push(Token::Action(
                    rest[start + 1..start + end].trim().to_string(),
                ));
                rest = &rest[start + end + 1..];
            }
        }
    }
    Ok(tokens)
}

/// The index of the `}` that closes the `{` at the start of `text`, skipping quoted strings.
fn closing_brace(text: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(1) {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => quote = Some(c),
                '}' => return Some(i),
                _ => {}
            },
        }
    }
    None
}

fn parse_nodes(
    tokens: &[Token],
    position: &mut usize,
    in_range: bool,
) -> Result<Vec<Node>, String> {
    let mut nodes = Vec::new();
    while *position < tokens.len() {
        let token = &tokens[*position];
        *position += 1;
        match token {
            Token::Text(text) => nodes.push(Node::Text(text.clone())),
            Token::Action(action) if action == "end" => {
                if in_range {
                    return Ok(nodes);
                }
                return Err("{end} without {range}".into());
            }
            Token::Action(action) => {
                if let Some(path) = action.strip_prefix("range ") {
                    let body = parse_nodes(tokens, position, true)?;
                    nodes.push(Node::Range(translate(path.trim())?, body));
                } else if let Some(literal) = string_literal(action)? {
                    nodes.push(Node::Text(literal));
                } else {
                    nodes.push(Node::Path(translate(action)?));
                }
            }
        }
    }
    if in_range {
        return Err("{range} without {end}".into());
    }
    Ok(nodes)
}

/// `"\n"` or `'text'` as the text it stands for; `None` when the action is not a literal.
fn string_literal(action: &str) -> Result<Option<String>, String> {
    let Some(first) = action.chars().next() else {
        return Err("empty action {}".into());
    };
    if first != '"' && first != '\'' {
        return Ok(None);
    }
    if action.len() < 2 || !action.ends_with(first) {
        return Err(format!("unterminated string {action}"));
    }
    let inner = &action[1..action.len() - 1];
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    Ok(Some(out))
}

/// A kubectl path (`.a.b[*].c`, `$.a`, `..name`, `@.a`) as an RFC 9535 query relative to the
/// current node (`$`).
fn translate(path: &str) -> Result<String, String> {
    let path = path.trim();
    let rest = path
        .strip_prefix('$')
        .or_else(|| path.strip_prefix('@'))
        .unwrap_or(path);
    let mut out = String::from("$");
    let chars: Vec<char> = rest.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                let recursive = chars.get(i + 1) == Some(&'.');
                if recursive {
                    out.push_str("..");
                    i += 2;
                } else {
                    i += 1;
                }
                match chars.get(i) {
                    None if recursive => return Err(format!("{path:?} ends with ..")),
                    None => {} // `.` alone: the current node
                    Some('*') => {
                        out.push_str(if recursive { "*" } else { ".*" });
                        i += 1;
                    }
                    Some('[') => {}
                    Some(_) => {
                        let mut name = String::new();
                        while let Some(&c) = chars.get(i) {
                            match c {
                                '\\' if i + 1 < chars.len() => {
                                    name.push(chars[i + 1]);
                                    i += 2;
                                }
                                '.' | '[' => break,
                                _ => {
                                    name.push(c);
                                    i += 1;
                                }
                            }
                        }
                        out.push_str(&format!(
                            "['{}']",
                            name.replace('\\', "\\\\").replace('\'', "\\'")
                        ));
                    }
                }
            }
            '[' => {
                // Copied through, with kubectl's filter paths (`@.a-b`) left to the crate.
                let start = i;
                let mut depth = 0;
                let mut quote: Option<char> = None;
                while i < chars.len() {
                    let c = chars[i];
                    match quote {
                        Some(q) if c == q && chars[i - 1] != '\\' => quote = None,
                        Some(_) => {}
                        None => match c {
                            '\'' | '"' => quote = Some(c),
                            '[' => depth += 1,
                            ']' => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        },
                    }
                    i += 1;
                }
                if i >= chars.len() {
                    return Err(format!("unclosed [ in {path:?}"));
                }
                out.extend(&chars[start..=i]);
                i += 1;
            }
            c if i == 0 => {
                // `metadata.name` without the leading dot, as kubectl accepts in custom columns.
                let _ = c;
                return translate(&format!(".{rest}"));
            }
            other => return Err(format!("unexpected {other:?} in {path:?}")),
        }
    }
    Ok(out)
}

fn query<'a>(value: &'a Value, path: &str) -> Result<Vec<&'a Value>, String> {
    value
        .query(path)
        .map_err(|e| format!("cannot evaluate {path}: {e}"))
}

fn render_nodes(nodes: &[Node], current: &Value, out: &mut String) -> Result<(), String> {
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Path(path) => {
                let values = query(current, path)?;
                let texts: Vec<String> = values.into_iter().map(value_text).collect();
                out.push_str(&texts.join(" "));
            }
            Node::Range(path, body) => {
                for item in query(current, path)? {
                    render_nodes(body, item, out)?;
                }
            }
        }
    }
    Ok(())
}

/// A value as kubectl prints it in a template: strings raw, anything else as JSON.
pub fn value_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list() -> Value {
        json!({"kind": "List", "items": [
            {"metadata": {"name": "a", "labels": {"app.kubernetes.io/name": "x", "tier-1": "web"}},
             "status": {"busyCount": 2, "conditions": [{"type": "Ready", "status": "True"}, {"type": "Paused", "status": "False"}]}},
            {"metadata": {"name": "b", "labels": {}},
             "status": {"busyCount": 0, "conditions": [{"type": "Ready", "status": "False"}]}},
        ]})
    }

    #[test]
    fn templates_render_like_kubectl() {
        for (template, expected) in [
            ("{.items[*].metadata.name}", "a b"),
            ("{.items[0].status.busyCount}", "2"),
            (
                "{range .items[*]}{.metadata.name}={.status.busyCount}{\"\\n\"}{end}",
                "a=2\nb=0\n",
            ),
            ("names: {.items[*].metadata.name}!", "names: a b!"),
            (
                "{.items[*].status.conditions[?(@.type==\"Ready\")].status}",
                "True False",
            ),
            (
                "{.items[0].metadata.labels.app\\.kubernetes\\.io/name}",
                "x",
            ),
            ("{.items[0].metadata.labels.tier-1}", "web"),
            ("{.items[1].metadata.labels}", "{}"),
            ("{.items[0].metadata.nothing}", ""),
            ("{$.kind}", "List"),
            ("{..busyCount}", "2 0"),
            ("{range .items[*]}[{.metadata.name}]{end}", "[a][b]"),
            ("{'\\t'}", "\t"),
        ] {
            let parsed = Template::parse(template).unwrap_or_else(|e| panic!("{template}: {e}"));
            assert_eq!(parsed.render(&list()).unwrap(), expected, "{template}");
        }
    }

    #[test]
    fn bad_templates_are_errors_not_panics() {
        for template in [
            "{.items",
            "{range .items[*]}",
            "{end}",
            "{.items[0}",
            "{\"x}",
            "{}",
        ] {
            assert!(Template::parse(template).is_err(), "{template}");
        }
    }
}
