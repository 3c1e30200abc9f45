// Handler-style runtimes for tests/test_nodejs.py: `func(cfg)` returns
// `(req: Buffer) => answer`.
const { Worker } = require('worker_threads');

exports.echo = () => (req) => req;

exports.upper = (cfg) => (req) => cfg + req.toString().toUpperCase();

// null for a nil request, else its length: tells nil from ''
exports.kind = () => (req) => (req === null ? 'null' : `buffer:${req.length}`);

exports.later = (cfg) => async (req) => {
  await new Promise((resolve) => setTimeout(resolve, Number(cfg)));
  return 'late:' + req.toString();
};

// A handler taking a signal: "seen" answers how many "wait" calls saw
// theirs aborted; "wait" sleeps an hour unless aborted; "ignore" never
// settles, whatever happens; anything else is echoed.
let aborted = 0;
exports.abortable = () => async (req, signal) => {
  const r = req.toString();
  if (r === 'seen') return String(aborted);
  if (r === 'wait') {
    try {
      await require('timers/promises').setTimeout(3600e3, null, { signal });
    } catch (e) {
      if (e.name === 'AbortError' && signal.aborted) aborted += 1;
      throw e;
    }
    return 'slept';
  }
  if (r === 'ignore') await new Promise(() => {});
  return req;
};

// what a handler declared with one parameter gets as a second argument
exports.arity = () => async function arity(req) {
  // eslint-disable-next-line prefer-rest-params
  return String(arguments[1]);
};

exports.throws = () => (req) => {
  throw new TypeError('bad request: ' + req.toString());
};

exports.rejects = () => async (req) => {
  throw new RangeError('rejected: ' + req.toString());
};

exports.nil = () => () => null;

exports.number = () => () => 42;

exports.bytes = () => () => new Uint8Array([0, 1, 2, 255]);

exports.pid = () => () => String(process.pid);

// an exception nobody catches, and a rejection nobody handles, after the
// answer: the runtime must go on
exports.stray = () => (req) => {
  setTimeout(() => { throw new Error('stray exception ' + req.toString()); }, 1);
  Promise.reject(new Error('stray rejection ' + req.toString()));
  return 'ok';
};

// console at every level, and a worker_thread writing to stdout
exports.console = () => (req) => {
  const tag = req.toString();
  console.log('log ' + tag);
  console.info('info ' + tag);
  console.warn('warn ' + tag);
  console.error('error ' + tag);
  process.emitWarning('warning ' + tag);
  return new Promise((resolve) => {
    const w = new Worker(`process.stdout.write('worker ${tag}\\n')`, { eval: true });
    w.on('exit', () => resolve('logged'));
  });
};

exports.exit = () => (req) => {
  process.exit(Number(req.toString() || 0));
};

// an npm package from a folder on NODE_PATH
exports.escape = () => {
  const escapeHtml = require('escape-html');
  return (req) => escapeHtml(req.toString());
};

// which Node the worker runs: "<version> <NODE_MODULE_VERSION>"
exports.versions = () => () => `${process.versions.node} ${process.versions.modules}`;

// SIGUSR1 must not reach Node (its inspector) when sent to the worker
exports.inspector = () => () => {
  let url = 'none';
  try {
    url = require('inspector').url() || 'none';
  } catch (e) {
    url = 'no inspector module';
  }
  return url;
};

exports.generator = () => async function* stream(req) {
  yield req;
};
