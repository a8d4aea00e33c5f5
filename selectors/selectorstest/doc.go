// Package selectorstest draws random clusters of API objects and the packets
// to ask about them, for the property tests and fuzz targets that hold a
// compiled form of the policies (the selectors Model, the nft table)
// against the reference evaluator (selectors/reference). Every choice of
// the generator is read from a byte string (Choices), so a fuzzer's input
// steers it. Only tests import it.
package selectorstest
