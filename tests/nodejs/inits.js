// init functions that fail in each way, for tests/test_nodejs.py.
exports.throws = () => {
  throw new Error('no configuration given');
};
exports.undef = () => undefined;
exports.rc = () => 3;
exports.later = async (cfg) => {
  await new Promise((resolve) => setTimeout(resolve, 10));
  return (req) => 'async init: ' + req.toString();
};
exports.value = 7;
