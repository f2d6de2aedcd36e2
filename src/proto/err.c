/* The error table's lookups. Pure. */
#include "ws/err.h"

struct err_info {
    const char *text;
    int close_code;
    int http_status;
};

static const struct err_info table[WS_ERR_COUNT] = {
#define WS_ERR_ROW(name, close, status, text) {text, close, status},
    WS_ERR_LIST(WS_ERR_ROW)
#undef WS_ERR_ROW
};

static const struct err_info *lookup(int err)
{
    int index = -1 - err;
    if (err >= 0 || index >= WS_ERR_COUNT)
        return 0;
    return &table[index];
}

const char *ws_strerror(int err)
{
    if (err == WS_OK)
        return "ok";
    const struct err_info *info = lookup(err);
    return info ? info->text : "unknown error";
}

int ws_err_close_code(int err)
{
    const struct err_info *info = lookup(err);
    return info && info->close_code ? info->close_code : 1011;
}

int ws_err_http_status(int err)
{
    const struct err_info *info = lookup(err);
    return info && info->http_status ? info->http_status : 500;
}
