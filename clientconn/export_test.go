package clientconn

// NoJitter makes WithMaxConnectionAge exact, so tests can count rotations.
func NoJitter() Option { return optionFunc(func(o *options) { o.noJitter = true }) }
