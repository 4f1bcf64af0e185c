#ifndef RINGMASTER_CZLIB_SHIM_H
#define RINGMASTER_CZLIB_SHIM_H

#include <zlib.h>

/// `inflateInit2` is a macro (it passes the library version and the stream's size along), so
/// Swift cannot call it; this function can.
static inline int ringmaster_inflateInit2(z_streamp stream, int windowBits) {
    return inflateInit2(stream, windowBits);
}

#endif
