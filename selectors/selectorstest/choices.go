package selectorstest

import "math/rand"

// Choices hands the generator its choices from a byte string, one byte per
// choice, so that a fuzzer's input drives every decision and coverage
// guidance can steer it: flipping one byte changes one choice. When the
// bytes run out every choice is 0, and the generator makes 0 its plainest
// option, so a short input is a small, simple cluster.
type Choices struct {
	data []byte
	// apiValid: draw only what the API server accepts (APIValid).
	apiValid bool
}

// APIValid makes the generator draw only objects the API server accepts,
// for tests that create them through it: each part the API server would
// refuse becomes a plain valid one, read from the same bytes.
func (c *Choices) APIValid() *Choices {
	c.apiValid = true
	return c
}

// NewChoices returns the choices data encodes.
func NewChoices(data []byte) *Choices { return &Choices{data: data} }

// RandomChoices returns n random choices, for property tests that draw
// clusters from a seeded source rather than a fuzzer.
func RandomChoices(r *rand.Rand, n int) *Choices {
	data := make([]byte, n)
	r.Read(data)
	return NewChoices(data)
}

// Intn returns a choice in [0, n). n must be 1 to 256.
func (c *Choices) Intn(n int) int {
	if n <= 1 || len(c.data) == 0 {
		return 0
	}
	b := c.data[0]
	c.data = c.data[1:]
	return int(b) % n
}

// Pick returns one of options.
func Pick[T any](c *Choices, options ...T) T {
	return options[c.Intn(len(options))]
}
