'use strict';
// resty-ffi's Node.js bootstrap: the main script of the Node environment
// the loader starts inside an nginx worker (host/host.cc runs it with
// `process` and Node's builtin `require`).
//
// It sets the process up for living inside nginx, then waits for load jobs:
// - `require("resty_ffi")` finds the loader's native module (src/binding.rs)
//   in this thread and in every worker_thread: Module._load answers the
//   name, and worker_threads.Worker is wrapped so each worker runs the same
//   set-up before its own script;
// - console, process.stdout / process.stderr (worker_threads' output comes
//   through them) and Node's warnings become lines in nginx's error.log,
//   written by nginx at their level, tagged "ffi_nodejs:";
// - an uncaught exception or an unhandled rejection is logged with its
//   stack and the runtime goes on (Node would end the process: the worker);
// - `load(...)`, called by the loader for each `libffi_init`, loads the
//   module, calls `func(cfg, tq)` and picks the style; it reports through
//   `_loaded(id, rc, text)`, rc 0 or one of the codes below;
// - `track(value, id)` follows a handler's Promise or streams its async
//   iterable (see src/serve.rs);
// - a handler declared with two parameters, `(req, signal)`, gets an
//   AbortSignal per call, aborted when the call is given up (see onSpace).

const B = process._linkedBinding('resty_ffi');
const Module = require('module');
const path = require('path');
const util = require('util');
const { pathToFileURL } = require('url');
const { Writable } = require('stream');

const ERR = 4;
const WARN = 5;
const NOTICE = 6;
const INFO = 7;
const DEBUG = 8;
const TAG = 'ffi_nodejs: ';

// libffi_init's return codes for load failures (src/error.rs has the rest)
const RC_IMPORT = 5;
const RC_NO_FUNCTION = 6;
const RC_INIT_THREW = 7;
const RC_BAD_RETURN = 8;
const RC_SERVE = 9;

function log(level, text) {
  for (const line of String(text).split('\n')) {
    B.log(level, TAG + line.replace(/\r$/, ''));
  }
}

function stackOf(e) {
  if (e instanceof Error && typeof e.stack === 'string') return e.stack;
  return util.inspect(e);
}

function describe(e) {
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return util.inspect(e);
}

// The set-up every thread runs: `require("resty_ffi")` and wrapped
// Workers. Named, so its own text can be handed to nested workers.
function install(binding) {
  const Mod = require('module');
  const pathMod = require('path');
  const { fileURLToPath } = require('url');
  const api = Object.freeze({
    poll_task: binding.poll_task,
    get_req: binding.get_req,
    get_req_buf: binding.get_req_buf,
    respond: binding.respond,
    log: binding.log,
    ERR: 4,
    WARN: 5,
    NOTICE: 6,
    INFO: 7,
    DEBUG: 8,
  });
  if (!Mod._load.restyFfi) {
    const load = Mod._load;
    Mod._load = function _load(request, parent, isMain) {
      if (request === 'resty_ffi') return api;
      return load.call(this, request, parent, isMain);
    };
    Mod._load.restyFfi = true;
  }
  const wt = require('worker_threads');
  if (!wt.Worker.restyFfi) {
    const Original = wt.Worker;
    const prelude = `(${install.toString()})(process._linkedBinding('resty_ffi'));\n`;
    class Worker extends Original {
      constructor(filename, options) {
        const opts = Object.assign({}, options);
        if (opts.eval) {
          super(prelude + String(filename), opts);
          return;
        }
        let file = filename;
        if (filename instanceof URL) {
          if (filename.protocol !== 'file:') {
            super(filename, options);
            return;
          }
          file = fileURLToPath(filename);
        }
        file = String(file);
        if (!pathMod.isAbsolute(file) && !/^\.\.?[\\/]/.test(file)) {
          super(filename, options); // Node's own error for such a path
          return;
        }
        opts.eval = true;
        super(prelude + `process.argv[1] = ${JSON.stringify(pathMod.resolve(file))};\n` +
              'require("module").runMain();\n', opts);
      }
    }
    Worker.restyFfi = true;
    wt.Worker = Worker;
    Mod.syncBuiltinESMExports();
  }
  return api;
}

class LineWriter extends Writable {
  constructor(level, fd) {
    super({ decodeStrings: false });
    this.level = level;
    this.fd = fd;
    this.isTTY = false;
    this.partial = '';
  }

  _write(chunk, encoding, done) {
    const text = this.partial + (typeof chunk === 'string' ? chunk : chunk.toString('utf8'));
    const lines = text.split('\n');
    this.partial = lines.pop();
    for (const line of lines) B.log(this.level, TAG + line.replace(/\r$/, ''));
    done();
  }

  _final(done) {
    if (this.partial) B.log(this.level, TAG + this.partial);
    this.partial = '';
    done();
  }
}

function redirectOutput() {
  const stdout = new LineWriter(NOTICE, 1);
  const stderr = new LineWriter(ERR, 2);
  Object.defineProperty(process, 'stdout', { configurable: true, enumerable: true, get: () => stdout });
  Object.defineProperty(process, 'stderr', { configurable: true, enumerable: true, get: () => stderr });
  const levels = { log: NOTICE, info: INFO, debug: DEBUG, warn: WARN, error: ERR, dir: NOTICE };
  for (const [name, level] of Object.entries(levels)) {
    console[name] = name === 'dir'
      ? (obj, opts) => log(level, util.inspect(obj, opts))
      : (...args) => log(level, util.format(...args));
  }
  console.trace = (...args) => {
    const stack = new Error().stack.split('\n').slice(2).join('\n');
    log(ERR, `Trace: ${util.format(...args)}\n${stack}`);
  };
  process.on('warning', (w) => log(WARN, `${w.name}: ${w.message}`));
  process.on('uncaughtException', (e, origin) => {
    log(ERR, `uncaught exception (${origin}); the runtime goes on: ${stackOf(e)}`);
  });
  process.on('unhandledRejection', (reason) => {
    log(ERR, `unhandled Promise rejection; the runtime goes on: ${stackOf(reason)}`);
  });
}

class LoadError extends Error {
  constructor(rc, text) {
    super(text);
    this.rc = rc;
  }
}

function nodePath() {
  return (process.env.NODE_PATH || '').split(path.delimiter).filter(Boolean);
}

// `require` as a module in the folder a spec is relative to: NODE_PATH's
// first folder for ./ and ../ (as lua-resty-ffi), else the working one.
function requireFor(spec) {
  const relative = /^\.\.?(\/|$)/.test(spec);
  const base = relative && nodePath().length ? nodePath()[0] : process.cwd();
  return Module.createRequire(path.resolve(base) + path.sep);
}

let esmImport = null;
let reloads = 0;

// import() from a CommonJS module of our own: the bootstrap itself is
// compiled as one of Node's builtins, which cannot import.
function importEsm(url) {
  if (!esmImport) {
    const m = new Module('[resty_ffi import]', null);
    m.filename = path.join(process.cwd(), '[resty_ffi import].js');
    m.paths = [];
    m._compile('module.exports = (url) => import(url);', m.filename);
    esmImport = m.exports;
  }
  return esmImport(url);
}

async function loadModule(spec, reload) {
  const req = requireFor(spec);
  let file;
  try {
    file = req.resolve(spec);
  } catch (e) {
    if (e && e.code === 'MODULE_NOT_FOUND') {
      throw new LoadError(RC_IMPORT, `cannot find module '${spec}' (NODE_PATH: ${process.env.NODE_PATH || 'not set'}; working directory: ${process.cwd()}): put it in a folder on NODE_PATH (\`env NODE_PATH=/srv/js;\` in nginx.conf) or give an absolute path`);
    }
    throw new LoadError(RC_IMPORT, `cannot resolve module '${spec}': ${describe(e)}`);
  }
  if (reload && Module._cache[file]) delete Module._cache[file];
  try {
    return { file, exports: req(file) };
  } catch (e) {
    if (e && e.code === 'ERR_REQUIRE_ESM') {
      const url = pathToFileURL(file).href + (reload ? `?reload=${++reloads}` : '');
      try {
        return { file, exports: await importEsm(url) };
      } catch (e2) {
        log(ERR, stackOf(e2));
        throw new LoadError(RC_IMPORT, `importing module '${spec}' (${file}) threw ${describe(e2)}`);
      }
    }
    log(ERR, stackOf(e));
    throw new LoadError(RC_IMPORT, `loading module '${spec}' (${file}) threw ${describe(e)}`);
  }
}

function isThenable(v) {
  return v !== null && (typeof v === 'object' || typeof v === 'function') && typeof v.then === 'function';
}

function describeValue(v) {
  if (v === undefined) return 'undefined';
  if (v === null) return 'null';
  const text = util.inspect(v, { depth: 0, breakLength: Infinity });
  return `a ${typeof v} (${text.length > 80 ? text.slice(0, 77) + '...' : text})`;
}

async function start(spec, reload, func, rest, tq) {
  const { file, exports } = await loadModule(spec, reload);
  let f = exports == null ? undefined : exports[func];
  if (f === undefined && exports && exports.default && typeof exports.default[func] === 'function') {
    f = exports.default[func];
  }
  if (typeof f !== 'function') {
    const keys = exports == null ? [] : Object.keys(exports);
    const why = f === undefined
      ? ` (it exports: ${keys.length ? keys.join(', ') : 'nothing'})`
      : ` (it is ${describeValue(f)}, not a function)`;
    throw new LoadError(RC_NO_FUNCTION, `module '${spec}' (${file}) has no function '${func}'${why}`);
  }
  const name = `${spec}.${func}`;
  let ret;
  try {
    ret = f(rest, tq);
    if (isThenable(ret)) ret = await ret;
  } catch (e) {
    log(ERR, `${name}(cfg, tq) threw: ${stackOf(e)}`);
    throw new LoadError(RC_INIT_THREW, `${name}(cfg, tq) threw ${describe(e)}`);
  }
  if (typeof ret === 'number' || typeof ret === 'bigint') {
    const rc = Number(ret) | 0;
    if (rc !== 0) throw new LoadError(rc, `${name}(cfg, tq) returned ${rc}`);
    return;
  }
  if (typeof ret === 'function') {
    try {
      B._serve(tq, ret.length >= 2 ? withSignal(ret) : ret, name);
    } catch (e) {
      throw new LoadError(RC_SERVE, `cannot serve ${name}: ${describe(e)}`);
    }
    return;
  }
  throw new LoadError(RC_BAD_RETURN, `${name}(cfg, tq) returned ${describeValue(ret)}: return 0 once your worker_threads poll the queue (require("resty_ffi")), or a handler function (req: Buffer) => Buffer | string | null | Promise`);
}

function load(id, spec, reload, func, rest, tq) {
  start(spec, reload, func, rest, tq).then(
    () => B._loaded(id, 0, ''),
    (e) => {
      if (e instanceof LoadError) {
        B._loaded(id, e.rc, e.message);
      } else {
        log(ERR, stackOf(e));
        B._loaded(id, 10, `loading '${spec}' failed: ${describe(e)}`);
      }
    });
}

// Calls in flight whose handler takes a signal: id -> AbortController.
const signals = new Map();
// The controller of the handler call just made, when its answer is one
// `track` follows next (serve.rs calls it right after the handler).
let lastController = null;

// `handler(req, signal)`: an AbortController per call (only for handlers
// that declare the parameter: the others pay nothing), kept by `track`
// when the answer is a Promise or a stream, dropped when it is not.
function withSignal(handler) {
  return function handle(req) {
    lastController = null;
    const ac = new AbortController();
    const v = handler(req, ac.signal);
    if (isThenable(v) || isStream(v)) lastController = ac;
    return v;
  };
}

// The call `id` settled (its answer goes to serve.rs next): its signal,
// if any, is no longer watched.
function settled(id) {
  if (signals.size !== 0) signals.delete(id);
}

// A handler's answer that is neither bytes, a string nor nil (serve.rs
// hands it over with the task's id): a Promise is followed, an async
// iterable or a generator streams, anything else is a wrong answer.
function track(value, id) {
  if (lastController !== null) {
    signals.set(id, lastController);
    lastController = null;
  }
  if (isThenable(value)) {
    Promise.resolve(value).then((v) => settle(v, id), (e) => {
      settled(id);
      B._fail(id, e);
    });
  } else {
    settle(value, id);
  }
}

function isStream(v) {
  if (v === null || typeof v !== 'object' || ArrayBuffer.isView(v) || v instanceof ArrayBuffer) {
    return false;
  }
  return typeof v[Symbol.asyncIterator] === 'function' ||
    (typeof v[Symbol.iterator] === 'function' && typeof v.next === 'function');
}

function settle(value, id) {
  if (isStream(value)) {
    stream(value, id);
  } else {
    settled(id);
    B._answer(id, value);
  }
}

// Producers waiting for room in a stream's window (see onSpace).
let spaceWaiters = [];

// A queue's space fd was readable: a stream made room, or a call was
// given up (its timeout, its client gone: the core signals the fd for
// every cancelled task). Producers waiting for room offer again; every
// call with a signal that nobody waits for any more has it aborted, and
// is answered now (to nobody: the core frees it), so it is freed however
// the handler takes the abort; what the handler settles with later goes
// nowhere.
function onSpace() {
  const waiters = spaceWaiters;
  spaceWaiters = [];
  for (const wake of waiters) wake();
  if (signals.size === 0) return;
  for (const [id, ac] of signals) {
    const c = B._cancelled(id);
    if (c === 0) continue;
    signals.delete(id);
    if (c === 1) {
      try {
        ac.abort();
      } catch (e) {
        log(ERR, `an abort listener threw: ${stackOf(e)}`);
      }
      B._answer(id, null);
    }
  }
}

// Sends each value of `source` as one chunk; the end answers nil (the
// chunks are the answer). When the reader has gone, the iterator is closed
// (its finally blocks run) and the task ended.
async function stream(source, id) {
  const it = typeof source[Symbol.asyncIterator] === 'function'
    ? source[Symbol.asyncIterator]()
    : source[Symbol.iterator]();
  try {
    for (;;) {
      const { value, done } = await it.next();
      if (done) break;
      if (value == null) continue;
      let r = B._chunk(id, value);
      while (r === 2) {
        await new Promise((wake) => spaceWaiters.push(wake));
        r = B._chunk(id, value);
      }
      if (r !== 0) {
        if (typeof it.return === 'function') await it.return();
        break;
      }
    }
  } catch (e) {
    settled(id);
    B._fail(id, e);
    return;
  }
  settled(id);
  B._answer(id, null);
}

try {
  redirectOutput();
  install(B);
  B._setup(load, track, onSpace);
} catch (e) {
  log(ERR, `the loader's bootstrap failed: ${stackOf(e)}`);
  throw e;
}
