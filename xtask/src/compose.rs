//! compose.yaml's services as `docker run` arguments, for machines with
//! no compose: the file stays the one description of the fleet.
//!
//! It reads the YAML compose.yaml is written in — block mappings and
//! lists, flow lists of scalars, quoted scalars, comments, an anchor on a
//! mapping and `<<: *anchor` merges — with compose's `${VAR}` and
//! `${VAR:-default}` in values, and refuses anything else with the line it
//! cannot read. Of a service it knows what compose.yaml uses: image,
//! hostname, user, entrypoint, command, environment, volumes, working_dir,
//! shm_size, ports (`build` and `depends_on` are compose's own business).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Str(String),
    List(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl Node {
    fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn str(&self) -> Option<&str> {
        match self {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    fn strings(&self) -> Result<Vec<String>> {
        match self {
            Node::Str(s) => Ok(vec![s.clone()]),
            Node::List(items) => items
                .iter()
                .map(|n| n.str().map(str::to_owned).context("a list of strings"))
                .collect(),
            Node::Map(_) => bail!("a list of strings, not a mapping"),
        }
    }
}

struct Line<'a> {
    number: usize,
    indent: usize,
    text: &'a str,
}

struct Parser<'a> {
    lines: Vec<Line<'a>>,
    at: usize,
    anchors: HashMap<String, Node>,
    vars: &'a dyn Fn(&str) -> Option<String>,
}

/// A line without its comment (a `#` at its start or after a space, out
/// of quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev.is_whitespace() => return &line[..i],
            None => {}
        }
        prev = c;
    }
    line
}

impl Parser<'_> {
    fn error(&self, what: &str) -> anyhow::Error {
        match self.lines.get(self.at) {
            Some(l) => anyhow::anyhow!("compose.yaml line {}: {what}: {:?}", l.number, l.text),
            None => anyhow::anyhow!("compose.yaml: {what} at its end"),
        }
    }

    /// The block whose lines are indented `indent`.
    fn block(&mut self, indent: usize) -> Result<Node> {
        let Some(first) = self.lines.get(self.at) else {
            return Ok(Node::Map(Vec::new()));
        };
        if first.text.starts_with("- ") || first.text == "-" {
            let mut items = Vec::new();
            while let Some(l) = self.lines.get(self.at) {
                if l.indent != indent || !l.text.starts_with('-') {
                    break;
                }
                let value = l.text[1..].trim();
                self.at += 1;
                items.push(self.scalar_or_flow(value)?);
            }
            return Ok(Node::List(items));
        }
        let mut entries: Vec<(String, Node)> = Vec::new();
        let mut merged: Vec<(String, Node)> = Vec::new();
        while let Some(l) = self.lines.get(self.at) {
            if l.indent < indent {
                break;
            }
            if l.indent > indent {
                return Err(self.error("unexpected indentation"));
            }
            let Some((key, value)) = l.text.split_once(':') else {
                return Err(self.error("not `key: value`"));
            };
            let key = unquote(key.trim());
            let value = value.trim();
            self.at += 1;
            if key == "<<" {
                let Some(name) = value.strip_prefix('*') else {
                    return Err(self.error("a merge needs *anchor"));
                };
                match self.anchors.get(name) {
                    Some(Node::Map(m)) => merged.extend(m.iter().cloned()),
                    _ => return Err(self.error("no mapping anchored so")),
                }
                continue;
            }
            let (anchor, value) = match value.strip_prefix('&') {
                Some(rest) => {
                    let (name, rest) = rest.split_once(' ').unwrap_or((rest, ""));
                    (Some(name.to_owned()), rest.trim())
                }
                None => (None, value),
            };
            let node = if value.is_empty() {
                match self.lines.get(self.at) {
                    Some(next) if next.indent > indent => {
                        let deeper = next.indent;
                        self.block(deeper)?
                    }
                    Some(next) if next.indent == indent && next.text.starts_with('-') => {
                        self.block(indent)?
                    }
                    _ => Node::Str(String::new()),
                }
            } else if let Some(name) = value.strip_prefix('*') {
                self.anchors
                    .get(name)
                    .cloned()
                    .ok_or_else(|| self.error("no such anchor"))?
            } else {
                self.scalar_or_flow(value)?
            };
            if let Some(name) = anchor {
                self.anchors.insert(name, node.clone());
            }
            entries.push((key, node));
        }
        // Merged keys the mapping does not set itself.
        for (k, v) in merged {
            if !entries.iter().any(|(key, _)| *key == k) {
                entries.push((k, v));
            }
        }
        Ok(Node::Map(entries))
    }

    fn scalar_or_flow(&self, value: &str) -> Result<Node> {
        if let Some(inner) = value.strip_prefix('[') {
            let Some(inner) = inner.strip_suffix(']') else {
                return Err(self.error("a flow list on one line"));
            };
            return Ok(Node::List(
                split_flow(inner)
                    .into_iter()
                    .map(|s| self.interpolate(&unquote(s)).map(Node::Str))
                    .collect::<Result<_>>()?,
            ));
        }
        if value.starts_with('{') || value.starts_with('|') || value.starts_with('>') {
            return Err(self.error("flow mappings and block scalars are not read here"));
        }
        Ok(Node::Str(self.interpolate(&unquote(value))?))
    }

    /// compose's `${VAR}` and `${VAR:-default}` (a default may be empty).
    fn interpolate(&self, s: &str) -> Result<String> {
        let mut out = String::new();
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let Some(end) = rest[start..].find('}') else {
                return Err(self.error("`${` without `}`"));
            };
            let inner = &rest[start + 2..start + end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            match ((self.vars)(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {}
            }
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

fn split_flow(inner: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quote = None;
    let mut start = 0;
    for (i, c) in inner.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == ',' => {
                parts.push(inner[start..i].trim());
                start = i + 1;
            }
            None => {}
        }
    }
    let last = inner[start..].trim();
    if !last.is_empty() {
        parts.push(last);
    }
    parts
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        s[1..s.len() - 1]
            .replace("\\\"", "\"")
            .replace("\\\\", "\\")
    } else if s.len() >= 2 && s.starts_with('\'') && s.ends_with('\'') {
        s[1..s.len() - 1].replace("''", "'")
    } else {
        s.to_owned()
    }
}

/// Reads YAML `text` (the subset above), `vars` giving `${VAR}`.
pub fn parse(text: &str, vars: &dyn Fn(&str) -> Option<String>) -> Result<Node> {
    let lines = text
        .lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let line = strip_comment(raw).trim_end();
            let text = line.trim_start();
            (!text.is_empty()).then(|| Line {
                number: i + 1,
                indent: line.len() - text.len(),
                text,
            })
        })
        .collect();
    let mut parser = Parser {
        lines,
        at: 0,
        anchors: HashMap::new(),
        vars,
    };
    let node = parser.block(0)?;
    if parser.at < parser.lines.len() {
        return Err(parser.error("cannot read"));
    }
    Ok(node)
}

/// compose.yaml's services.
pub struct Services {
    root: Node,
    /// The folder relative volume paths start from.
    dir: PathBuf,
}

impl Services {
    /// Reads `path` with `env` (then the process's environment) for `${VAR}`.
    pub fn read(path: &Path, env: &[(&str, String)]) -> Result<Services> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let vars = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(name).ok())
        };
        let root = parse(&text, &vars)?;
        let dir = std::env::current_dir()?
            .join(path)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Ok(Services { root, dir })
    }

    /// `docker run` arguments (after `run -d`) for service `name`, as
    /// compose would start it in `project` on `network`.
    pub fn docker_run_args(&self, name: &str, project: &str, network: &str) -> Result<Vec<String>> {
        let service = self
            .root
            .get("services")
            .and_then(|s| s.get(name))
            .with_context(|| format!("compose.yaml has no service {name}"))?;
        let Node::Map(entries) = service else {
            bail!("compose.yaml: service {name} is not a mapping");
        };
        let mut args = vec![
            format!("--name={project}_{name}"),
            format!("--network={network}"),
            format!("--network-alias={name}"),
        ];
        let mut image = None;
        let mut entrypoint: Vec<String> = Vec::new();
        let mut command: Vec<String> = Vec::new();
        for (key, value) in entries {
            let one = || {
                value
                    .str()
                    .map(str::to_owned)
                    .with_context(|| format!("compose.yaml: {name}.{key} is a string"))
            };
            match key.as_str() {
                "image" => image = Some(one()?),
                "hostname" => args.push(format!("--hostname={}", one()?)),
                "user" => args.push(format!("--user={}", one()?)),
                "working_dir" => args.push(format!("--workdir={}", one()?)),
                "shm_size" => args.push(format!("--shm-size={}", one()?)),
                "entrypoint" => entrypoint = value.strings()?,
                "command" => command = value.strings()?,
                "ports" => {
                    for port in value.strings()? {
                        args.push(format!("--publish={port}"));
                    }
                }
                "volumes" => {
                    for volume in value.strings()? {
                        let (source, target) = volume
                            .split_once(':')
                            .with_context(|| format!("compose.yaml: volume {volume:?}"))?;
                        let source = if source.starts_with('.') {
                            self.dir.join(source).display().to_string()
                        } else {
                            source.to_owned()
                        };
                        args.push(format!("--volume={source}:{target}"));
                    }
                }
                "environment" => match value {
                    Node::Map(vars) => {
                        for (k, v) in vars {
                            let v = v.str().unwrap_or_default();
                            args.push(format!("--env={k}={v}"));
                        }
                    }
                    other => {
                        for kv in other.strings()? {
                            args.push(format!("--env={kv}"));
                        }
                    }
                },
                "build" | "depends_on" => {}
                other => {
                    bail!("compose.yaml: {name}.{other} is not read by the docker run fallback")
                }
            }
        }
        let image = image.with_context(|| format!("compose.yaml: {name} has no image"))?;
        let mut tail = Vec::new();
        if let Some((program, rest)) = entrypoint.split_first() {
            args.push(format!("--entrypoint={program}"));
            tail.extend(rest.iter().cloned());
        }
        args.push(image);
        args.extend(tail);
        args.extend(command);
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fleet() {
        let env = [
            ("PYUST_IMAGE", "img:1".to_owned()),
            ("PYUST_LIVE_PORT", "7000".to_owned()),
        ];
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose.yaml");
        let services = Services::read(&path, &env).unwrap();
        let relay = services.docker_run_args("relay", "p", "p_default").unwrap();
        assert!(
            relay.contains(&"--publish=127.0.0.1:7000:5344".to_owned()),
            "{relay:?}"
        );
        assert!(relay.contains(&"--entrypoint=lttng-relayd".to_owned()));
        assert!(relay.contains(&"--user=root".to_owned()));
        assert_eq!(
            relay[relay.iter().position(|a| a == "img:1").unwrap() + 1],
            "--output=/traces"
        );
        let app = services.docker_run_args("app2", "p", "p_default").unwrap();
        assert!(app.contains(&"--hostname=app2".to_owned()), "{app:?}");
        assert!(app.contains(&"--network-alias=app2".to_owned()));
        assert!(app.contains(&"--env=PYUST_RELAY=relay".to_owned()));
        assert!(app.contains(&"--shm-size=256m".to_owned()));
        assert!(
            app.iter()
                .any(|a| a.starts_with("--volume=/") && a.ends_with("tests/fleet:/app:ro")),
            "{app:?}"
        );
        assert_eq!(
            app[app.len() - 2..],
            ["img:1".to_owned(), "/app/run.sh".to_owned()]
        );
        assert!(services.docker_run_args("app9", "p", "n").is_err());
    }

    #[test]
    fn yaml_subset() {
        let vars = |n: &str| (n == "A").then(|| "x".to_owned());
        let node = parse(
            "base: &b\n  k: '${A}-${B:-d}' # c\n  l: [\"1\", 2]\nm:\n  <<: *b\n  k: own\n  s:\n    - a\n    - \"b # not a comment\"\n",
            &vars,
        )
        .unwrap();
        assert_eq!(
            node.get("base").unwrap().get("k").unwrap().str(),
            Some("x-d")
        );
        let m = node.get("m").unwrap();
        assert_eq!(m.get("k").unwrap().str(), Some("own"));
        assert_eq!(m.get("l").unwrap().strings().unwrap(), ["1", "2"]);
        assert_eq!(
            m.get("s").unwrap().strings().unwrap(),
            ["a", "b # not a comment"]
        );
        assert!(parse("a: {b: c}\n", &vars).is_err());
        assert!(parse("a:\n    b: c\n  d: e\n", &vars).is_err());
    }
}
