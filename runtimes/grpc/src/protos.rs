//! The process's descriptor pool: .proto files compiled at run time with
//! protox (imports resolved from include folders, well-known types built
//! in), and the method lookup every call starts with.
//!
//! Guarantees: loading is synchronous and never touches the network, so
//! Lua may call it in any phase (init_worker too). A file already in the
//! pool (same name) is skipped, so loading twice is cheap and harmless.
//! Lookups take a read lock on a cache of methods; a load swaps the pool
//! and clears that cache.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{OnceLock, RwLock};

use prost_reflect::{DescriptorPool, MethodDescriptor};
use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

use crate::error::Error;

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
            File::from_source(name, &self.source)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

fn resolver(includes: &[PathBuf]) -> ChainFileResolver {
    let mut chain = ChainFileResolver::new();
    for inc in includes {
        chain.add(IncludeFileResolver::new(inc.clone()));
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

/// Compiles the file at `path`; imports are looked up in its folder, then
/// in `includes`, then among the well-known types.
pub fn load_file(path: &str, includes: &[String]) -> Result<(), Error> {
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
pub fn load_source(source: &str, includes: &[String]) -> Result<(), Error> {
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
