package interceptors

// SetShedderLogf replaces where s writes its summary line (tests only).
func SetShedderLogf(s *Shedder, f func(format string, args ...any)) { s.logf = f }
