/* hiredis's headers (the async API and its libev adapter) for the core's Redis modules, with the
 * warnings our flags would raise inside them silenced. Nothing of our own. */
#ifndef WS_REDIS_HIREDIS_H
#define WS_REDIS_HIREDIS_H

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wshadow"
#include <hiredis/adapters/libev.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/sds.h>
#pragma GCC diagnostic pop

#endif
