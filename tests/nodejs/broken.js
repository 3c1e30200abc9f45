// A module with a syntax error, for tests/test_nodejs.py's load errors.
exports.init = () => {
