// Streaming handlers for tests/test_nodejs.py: each value a chunk.
let closed = 0;

// cfg "n,size": n chunks of `size` bytes, numbered, from an async generator
exports.chunks = (cfg) => {
  const [n, size] = cfg.split(',').map(Number);
  return async function* chunks(req) {
    for (let i = 1; i <= n; i++) {
      const head = String(i).padStart(8, '0');
      yield head + req.toString().repeat(size).slice(0, size - 8);
      if (i % 10 === 0) await new Promise((resolve) => setImmediate(resolve));
    }
  };
};

// a plain (sync) generator of strings and Buffers
exports.gen = () => function* gen(req) {
  yield 'a:';
  yield Buffer.from(req);
  yield ':z';
};

// an async function whose Promise resolves to an async iterable
exports.later = () => async (req) => {
  await new Promise((resolve) => setTimeout(resolve, 5));
  return (async function* inner() {
    yield 'later:';
    yield req;
  })();
};

// never ends by itself: the reader's close must stop it (finally runs)
exports.forever = () => async function* forever(req) {
  try {
    for (let i = 0; ; i++) {
      yield `tick${i};`;
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
  } finally {
    closed += 1;
  }
};

exports.closed = () => () => String(closed);

// fails after two chunks
exports.fails = () => async function* fails() {
  yield 'one;';
  yield 'two;';
  throw new Error('stream broke');
};

// yields something that is not bytes
exports.wrong = () => async function* wrong() {
  yield 'ok;';
  yield 42;
};
