// Handler-style runtimes for tests/test_nodejs.py.
exports.echo = (cfg) => (req) => req;

exports.upper = (cfg) => (req) => (cfg || '') + req.toString().toUpperCase();

exports.later = (cfg) => async (req) => {
  const ms = Number(cfg || 0);
  await new Promise((resolve) => setTimeout(resolve, ms));
  return 'late:' + req.toString();
};

exports.throws = () => (req) => {
  throw new TypeError('bad request: ' + req.toString());
};

exports.rejects = () => async (req) => {
  throw new RangeError('rejected: ' + req.toString());
};

exports.nil = () => () => null;

exports.number = () => () => 42;

exports.bytes = () => (req) => new Uint8Array([0, 1, 2, 255]);
