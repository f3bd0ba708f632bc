package debugpage

// Server is the server half of the page: load shedding and the TLS
// handshakes servers answered.
type Server struct {
	Shedders   []Shedder          `json:"shedders"`
	Handshakes []ServerHandshakes `json:"handshakes"`
}

// Shedder is one server load shedder.
type Shedder struct {
	Name     string `json:"name"`
	Limit    int    `json:"limit"`
	InFlight int    `json:"inFlight"`
	// Queued is how many requests wait for a slot.
	Queued int `json:"queued"`
	// Reserved is how many unary requests the tap admitted that have not
	// reached the interceptor yet: they count against the limit, so a
	// limit of 4 with nothing in flight sheds while 4 are reserved.
	Reserved int `json:"reserved"`
	// Shed counts shed calls by reason since start.
	Shed map[string]int64 `json:"shed"`
}

// ServerHandshakes summarises the TLS handshakes one server answered.
type ServerHandshakes struct {
	Server string `json:"server"`
	Handshakes
	// ResumedShare is Resumed over all successful handshakes, 0..1.
	ResumedShare float64 `json:"resumedShare"`
}

func (s *Server) normalize() {
	empty(&s.Shedders)
	empty(&s.Handshakes)
	for i := range s.Shedders {
		if s.Shedders[i].Shed == nil {
			s.Shedders[i].Shed = map[string]int64{}
		}
	}
}
