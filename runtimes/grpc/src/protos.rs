//! The process's descriptor pool: .proto files compiled at run time with
//! protox (imports resolved from include folders, well-known types built
//! in), and the method lookup every call starts with.
//!
//! Guarantees: loading never touches the network. [`compile`] runs it on a
//! thread of its own with a large stack and waits for it, so Lua may call it
//! in any phase (init_worker too) without the parser's recursion ever
//! touching the worker's stack; [`compile_async`] is the same for phases
//! that can yield. Every source is checked for nesting deeper than
//! [`MAX_NESTING`] before it is parsed (protox recurses once per level), so
//! no input can exhaust that stack. A file already in the pool (same name)
//! is skipped, so loading twice is cheap and harmless. Lookups take a read
//! lock on a cache of methods; a load swaps the pool and clears that cache.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{OnceLock, RwLock};

use prost_reflect::{DescriptorPool, MethodDescriptor};
use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

use crate::error::Error;

/// How deep `{`, `[`, `(` and `<` may nest in a .proto (messages in
/// messages, option values in option values). protoc stops nested message
/// declarations at 32 levels; real files stay far below either.
pub const MAX_NESTING: usize = 100;

/// The compile thread's stack. protox and prost-reflect recurse once per
/// level at a few KiB each: MAX_NESTING levels need well under 2 MiB; the
/// rest is margin. Only the pages touched are ever mapped.
const COMPILE_STACK: usize = 64 << 20;

/// Where a source nests deeper than [`MAX_NESTING`]: the line of the first
/// bracket beyond it. Comments and string literals are skipped.
fn too_deep(src: &str) -> Option<usize> {
    let b = src.as_bytes();
    let (mut i, mut depth, mut line) = (0, 0usize, 1);
    while i < b.len() {
        match b[i] {
            b'\n' => line += 1,
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    line += usize::from(b[i] == b'\n');
                    i += 1;
                }
                i += 2;
                continue;
            }
            q @ (b'"' | b'\'') => {
                i += 1;
                while i < b.len() && b[i] != q && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'(' | b'<' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(line);
                }
            }
            b'}' | b']' | b')' | b'>' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

fn check_nesting(name: &str, src: &str) -> Result<(), protox::Error> {
    match too_deep(src) {
        None => Ok(()),
        Some(line) => Err(protox::Error::new(format!(
            "{name}:{line}: nested deeper than {MAX_NESTING} levels (messages, option values or \
             brackets); flatten it"
        ))),
    }
}

#[derive(Default)]
struct Pool {
    pool: DescriptorPool,
    methods: HashMap<String, MethodDescriptor>,
}

fn pool() -> &'static RwLock<Pool> {
    static POOL: OnceLock<RwLock<Pool>> = OnceLock::new();
    POOL.get_or_init(Default::default)
}

/// Serves one in-memory source under a fixed name, for `grpc.load(src)`.
struct SourceResolver {
    name: String,
    source: String,
}

impl FileResolver for SourceResolver {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name == self.name {
            check_nesting("the source given to grpc.load", &self.source)?;
            File::from_source(name, &self.source)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

/// An include folder whose files are checked for nesting before protox
/// parses them.
struct CheckedInclude {
    dir: PathBuf,
    inner: IncludeFileResolver,
}

impl FileResolver for CheckedInclude {
    fn resolve_path(&self, path: &Path) -> Option<String> {
        self.inner.resolve_path(path)
    }

    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        // a file that cannot be read is left to protox, which names the error
        if let Ok(src) = std::fs::read(self.dir.join(name)) {
            check_nesting(name, &String::from_utf8_lossy(&src))?;
        }
        self.inner.open_file(name)
    }
}

fn resolver(includes: &[PathBuf]) -> ChainFileResolver {
    let mut chain = ChainFileResolver::new();
    for inc in includes {
        chain.add(CheckedInclude {
            dir: inc.clone(),
            inner: IncludeFileResolver::new(inc.clone()),
        });
    }
    chain.add(GoogleFileResolver::new());
    chain
}

fn add(compiler: &protox::Compiler, name: &str) -> Result<(), Error> {
    let fds = compiler.file_descriptor_set();
    let mut p = pool().write().unwrap_or_else(|e| e.into_inner());
    let mut next = p.pool.clone();
    next.add_file_descriptor_set(fds)
        .map_err(|e| Error::Proto {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
    p.pool = next;
    p.methods.clear();
    Ok(())
}

/// What to compile: a file (imports from its folder, then `includes`) or
/// source text (imports from `includes`); the well-known types always.
pub struct Load {
    pub src: String,
    pub is_file: bool,
    pub includes: Vec<String>,
}

impl Load {
    fn run(&self) -> Result<(), Error> {
        if self.is_file {
            load_file(&self.src, &self.includes)
        } else {
            load_source(&self.src, &self.includes)
        }
    }

    fn name(&self) -> String {
        if self.is_file {
            self.src.clone()
        } else {
            "the source given to grpc.load".into()
        }
    }
}

/// A ':'-separated list of include folders.
pub fn includes(list: &str) -> Vec<String> {
    list.split(':')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// A `P` task's request: `<is_file 0|1>\t<includes>\n<path or source>`.
pub fn parse_load(req: &[u8]) -> Result<Load, Error> {
    let bad = || Error::Request("load: want <0|1>\\t<includes>\\n<source>".into());
    let nl = req.iter().position(|&b| b == b'\n').ok_or_else(bad)?;
    let head = std::str::from_utf8(&req[..nl]).map_err(|_| bad())?;
    let (flag, includes) = head.split_once('\t').ok_or_else(bad)?;
    Ok(Load {
        src: String::from_utf8_lossy(&req[nl + 1..]).into_owned(),
        is_file: match flag {
            "0" => false,
            "1" => true,
            _ => return Err(bad()),
        },
        includes: self::includes(includes),
    })
}

fn compile_thread() -> std::thread::Builder {
    std::thread::Builder::new()
        .name("ffi-grpc-protoc".into())
        .stack_size(COMPILE_STACK)
}

fn thread_error(load: &Load, what: &str) -> Error {
    Error::Proto {
        name: load.name(),
        reason: what.to_string(),
    }
}

/// Compiles on a thread of its own (the stack the parser needs) and waits
/// for it: for phases that cannot yield.
pub fn compile(load: Load) -> Result<(), Error> {
    std::thread::scope(|s| {
        let t = compile_thread()
            .spawn_scoped(s, || load.run())
            .map_err(|e| thread_error(&load, &format!("cannot start the compile thread: {e}")))?;
        t.join()
            .unwrap_or_else(|_| Err(thread_error(&load, "the compiler panicked")))
    })
}

/// As [`compile`], but the caller's task waits without blocking its
/// thread: for loads made from phases that can yield.
pub async fn compile_async(load: Load) -> Result<(), Error> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = load.name();
    compile_thread()
        .spawn(move || {
            let _ = tx.send(load.run());
        })
        .map_err(|e| Error::Proto {
            name: name.clone(),
            reason: format!("cannot start the compile thread: {e}"),
        })?;
    rx.await.unwrap_or_else(|_| {
        Err(Error::Proto {
            name,
            reason: "the compiler panicked".into(),
        })
    })
}

/// Compiles the file at `path`; imports are looked up in its folder, then
/// in `includes`, then among the well-known types.
pub(crate) fn load_file(path: &str, includes: &[String]) -> Result<(), Error> {
    let file = Path::new(path);
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(includes.iter().map(PathBuf::from));
    let proto_err = |e: protox::Error| Error::Proto {
        name: path.to_string(),
        reason: e.to_string(),
    };
    let mut compiler = protox::Compiler::with_file_resolver(resolver(&dirs));
    compiler.include_imports(true);
    if !file.is_file() {
        return Err(Error::Proto {
            name: path.to_string(),
            reason: "no such file (a relative path is taken from nginx's working folder)".into(),
        });
    }
    compiler.open_file(file).map_err(proto_err)?;
    add(&compiler, path)
}

/// Compiles a .proto given as text; imports come from `includes` and the
/// well-known types. The source is named after its hash, so loading the
/// same text twice is a no-op.
pub(crate) fn load_source(source: &str, includes: &[String]) -> Result<(), Error> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    source.hash(&mut h);
    let name = format!("source-{:016x}.proto", h.finish());
    let dirs: Vec<PathBuf> = includes.iter().map(PathBuf::from).collect();
    let mut chain = resolver(&dirs);
    chain.add(SourceResolver {
        name: name.clone(),
        source: source.to_string(),
    });
    let mut compiler = protox::Compiler::with_file_resolver(chain);
    compiler.include_imports(true);
    compiler.open_file(&name).map_err(|e| Error::Proto {
        name: "the source given to grpc.load".into(),
        reason: e.to_string(),
    })?;
    add(&compiler, "the source given to grpc.load")
}

/// The method at `path` ("/package.Service/Method").
pub fn method(path: &str) -> Result<MethodDescriptor, Error> {
    {
        let p = pool().read().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = p.methods.get(path) {
            return Ok(m.clone());
        }
    }
    let (service, name) = path
        .strip_prefix('/')
        .and_then(|s| s.split_once('/'))
        .ok_or_else(|| Error::UnknownMethod(path.to_string()))?;
    let mut p = pool().write().unwrap_or_else(|e| e.into_inner());
    let m = p
        .pool
        .get_service_by_name(service)
        .and_then(|s| s.methods().find(|m| m.name() == name))
        .ok_or_else(|| Error::UnknownMethod(path.to_string()))?;
    p.methods.insert(path.to_string(), m.clone());
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = r#"
        syntax = "proto3";
        package unit.test;
        import "google/protobuf/timestamp.proto";
        message Req { int64 n = 1; google.protobuf.Timestamp at = 2; }
        service S { rpc Call (Req) returns (Req); rpc Chat (stream Req) returns (stream Req); }
    "#;

    #[test]
    fn source_with_well_known_imports_compiles_and_its_methods_resolve() {
        load_source(SRC, &[]).unwrap();
        load_source(SRC, &[]).unwrap(); // again: a no-op
        let m = method("/unit.test.S/Call").unwrap();
        assert_eq!(m.input().full_name(), "unit.test.Req");
        assert!(method("/unit.test.S/Chat").unwrap().is_server_streaming());
        for bad in ["/unit.test.S/Nope", "unit.test.S/Call", "/nope.S/Call", ""] {
            let e = method(bad).err().unwrap().to_string();
            assert!(e.contains("unknown method"), "{e}");
        }
    }

    fn nested(n: usize) -> String {
        format!(
            "syntax = \"proto3\"; package deep{n};\n{}{}",
            "message M { ".repeat(n),
            "} ".repeat(n)
        )
    }

    #[test]
    fn nesting_is_counted_outside_comments_and_strings() {
        assert_eq!(too_deep(&nested(MAX_NESTING)), None);
        assert_eq!(too_deep(&nested(MAX_NESTING + 1)), Some(2));
        let braces = "{".repeat(MAX_NESTING + 1);
        for quiet in [
            format!("// {braces}\nmessage A {{}}"),
            format!("/* {braces}\n{braces} */ message A {{}}"),
            format!("option x = \"{braces}\\\"{braces}\";"),
            format!("option x = '{braces}';"),
            format!("{}{}", "{}".repeat(1000), "<>".repeat(1000)),
        ] {
            assert_eq!(too_deep(&quiet), None, "{quiet}");
        }
        let line3 = format!("a\n/* x\n */ {}", "[(<{".repeat(MAX_NESTING));
        assert_eq!(too_deep(&line3), Some(3));
    }

    #[test]
    fn deep_sources_are_refused_and_the_allowed_depth_compiles_on_a_small_stack() {
        // test threads have 2 MiB stacks; the compile thread has its own
        let load = |src: String| {
            compile(Load {
                src,
                is_file: false,
                includes: vec![],
            })
        };
        load(nested(MAX_NESTING)).unwrap();
        let e = load(nested(100_000)).err().unwrap().to_string();
        assert!(e.contains("nested deeper than 100 levels"), "{e}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = rt
            .block_on(compile_async(Load {
                src: nested(5000),
                is_file: false,
                includes: vec![],
            }))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("cannot compile the source given to grpc.load"),
            "{e}"
        );
        assert!(e.contains("nested deeper than 100 levels"), "{e}");
    }

    #[test]
    fn load_tasks_parse_and_refuse_bad_heads() {
        let l = parse_load(b"1\t/a:/b\n/x/y.proto").unwrap();
        assert!(l.is_file);
        assert_eq!(
            (l.src.as_str(), l.includes),
            ("/x/y.proto", vec!["/a".into(), "/b".into()])
        );
        let l = parse_load(b"0\t\nsyntax").unwrap();
        assert!(!l.is_file && l.includes.is_empty());
        for bad in [&b""[..], b"0", b"2\t\nx", b"0\nx"] {
            assert!(parse_load(bad).is_err());
        }
    }

    #[test]
    fn syntax_errors_and_missing_files_say_what_failed() {
        let e = load_source("syntax = \"proto3\"; message {", &[])
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("cannot compile the source given to grpc.load"),
            "{e}"
        );
        let e = load_file("/nonexistent/x.proto", &[]).err().unwrap();
        assert!(e.to_string().contains("/nonexistent/x.proto"), "{e}");
    }
}
