-- How many keys the bindings table has (bound or unbound last).
SELECT uniqExact(key) AS bindings FROM bindings
