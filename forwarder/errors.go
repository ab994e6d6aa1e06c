package forwarder

import (
	"errors"
	"fmt"
)

// Code classifies an error the way gRPC status codes do, so the control
// plane can translate without string matching.
type Code int

// Codes used by nsmfwd; the numbers equal gRPC's codes.
const (
	CodeUnknown            Code = 2
	CodeInvalidArgument    Code = 3
	CodeNotFound           Code = 5
	CodeAlreadyExists      Code = 6
	CodePermissionDenied   Code = 7
	CodeResourceExhausted  Code = 8
	CodeFailedPrecondition Code = 9
	CodeUnimplemented      Code = 12
	CodeInternal           Code = 13
	CodeUnavailable        Code = 14
)

func (c Code) String() string {
	switch c {
	case CodeInvalidArgument:
		return "InvalidArgument"
	case CodeNotFound:
		return "NotFound"
	case CodeAlreadyExists:
		return "AlreadyExists"
	case CodePermissionDenied:
		return "PermissionDenied"
	case CodeResourceExhausted:
		return "ResourceExhausted"
	case CodeFailedPrecondition:
		return "FailedPrecondition"
	case CodeUnimplemented:
		return "Unimplemented"
	case CodeInternal:
		return "Internal"
	case CodeUnavailable:
		return "Unavailable"
	default:
		return "Unknown"
	}
}

// Error is an error with a code and, when the caller's input is at fault,
// the request field it concerns (for example
// "connection.mechanism.parameters.inodeURL").
type Error struct {
	Code  Code
	Field string
	Err   error
}

func (e *Error) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("%s: %v", e.Field, e.Err)
	}
	return e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error with code and field; format and args follow
// fmt.Errorf, so %w wraps.
func Errorf(code Code, field, format string, args ...any) error {
	return &Error{Code: code, Field: field, Err: fmt.Errorf(format, args...)}
}

// CodeOf returns the code of the first *Error in err's tree, CodeUnknown for
// other non-nil errors.
func CodeOf(err error) Code {
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Code
	}
	return CodeUnknown
}

// ErrNotSupported is matched by errors that report a missing kernel or VPP
// feature.
var ErrNotSupported = errors.New("not supported")
